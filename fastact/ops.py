"""The layer-op table: one :class:`LayerOp` record per layer function, as ``fastact.table`` is for
the activations.

Each entry holds how to call the op forward and backward, a float64 reference written independently of
the kernels (direct loops over the definition), the PyTorch counterpart, the cases the tests run (shapes,
strides, paddings, the awkward ones), an input factory, tolerances per dtype, the CUDA counterpart where
there is one, and the cases the benchmarks time. The tests (``tests/test_ops.py``: forward against the
reference and PyTorch, every gradient against the reference, PyTorch and finite differences), the
benchmarks (``bench/test_layers.py``) and the table in docs/design.md are generated from it.

>>> from fastact import ops
>>> op = ops.get("conv2d")
>>> op.inputs, op.grads
(('x', 'weight', 'bias'), ('x', 'weight', 'bias'))
>>> sorted(ops.OPS)[:3]
['adaptive_avg_pool2d', 'avg_pool2d', 'batch_norm2d']
"""

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from ._util import pair

__all__ = ["Case", "LayerOp", "OPS", "get", "make_inputs", "markdown_table", "conv2d_reference",
           "conv2d_backward_reference",
           "max_pool2d_reference", "max_pool2d_backward_reference", "avg_pool2d_reference",
           "linear_reference", "linear_backward_reference", "batch_norm2d_reference", "softmax_reference",
           "cross_entropy_reference", "cross_entropy_backward_reference"]


@dataclass(frozen=True)
class Case:
    """One call of an op: the shapes of its array inputs and its parameters. ``omit`` names optional
    inputs left out (a convolution without bias); ``distinct`` draws values without ties (pooling:
    finite differences across a tie have no single answer)."""
    name: str
    shapes: dict
    params: dict = field(default_factory=dict)
    omit: tuple = ()
    distinct: bool = False


@dataclass(frozen=True)
class LayerOp:
    """A layer function, its gradient and everything that checks and measures them.

    ``forward(arrays, params) -> y`` and ``backward(dy, arrays, params, saved) -> {input: gradient}``
    call fastact, ``saved`` being what the training forward kept (:meth:`train_forward`: the output
    ``y``, or what ``saving(arrays, params) -> (y, saved)`` returns for an op whose backward needs
    more, batch norm's statistics); ``reference`` and ``reference_backward`` are the same in float64
    NumPy from the definition;
    ``torch(torch, tensors, params) -> y`` is PyTorch's op (autograd gives its gradients). ``arrays``
    maps input names (``inputs``, in call order) to arrays; ``grads`` are the inputs with a gradient.
    ``tol`` maps a dtype name to ``(rtol, atol)``; with ``atol_scaled`` the atol is relative to the
    largest magnitude of the expected array (for ops whose rounding is a few ulps of a whole output's
    scale rather than of each element, as Winograd's). ``cuda`` names the ``fastact.cuda`` function, or
    None. ``cases`` are what the tests run (small: the references are direct loops); ``bench`` are the
    network-sized cases that the benchmarks time.
    """
    name: str
    inputs: tuple
    grads: tuple
    forward: object
    backward: object
    reference: object
    reference_backward: object
    torch: object
    cases: tuple
    tol: dict = field(default_factory=lambda: {"float32": (1e-4, 1e-5), "float64": (1e-12, 1e-12)})
    atol_scaled: bool = False
    cuda: str = None
    bench: tuple = ()
    doc: str = ""
    saving: object = None

    def train_forward(self, arrays, params):
        """``(y, saved)``: the forward as training runs it, keeping what :attr:`backward` needs."""
        if self.saving is not None:
            return self.saving(arrays, params)
        y = self.forward(arrays, params)
        return y, y

    def case(self, name):
        for c in self.cases + self.bench:
            if c.name == name:
                return c
        raise ValueError(f"{self.name} has no case {name!r}; its cases: {[c.name for c in self.cases]}")


def make_inputs(op, case, dtype, seed=0):
    """The arrays of one case: standard normal floats of ``dtype`` (without ties where the case says
    ``distinct``), integer class labels for ``target``."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name in op.inputs:
        if name in case.omit:
            continue
        shape = case.shapes[name]
        if name == "target":
            arrays[name] = rng.integers(0, case.params["classes"], shape)
        elif case.distinct:
            n = int(np.prod(shape))
            arrays[name] = (rng.permutation(n).reshape(shape) / max(n, 1) * 4 - 2).astype(dtype)
        elif name == "running_var":
            arrays[name] = rng.uniform(0.5, 2.0, shape).astype(dtype)
        else:
            arrays[name] = rng.standard_normal(shape).astype(dtype)
    return arrays


# ------------------------------------------------------------------------------- float64 references
# Direct loops over the definitions, on Python lists (scalar access on lists is ~5x cheaper than on
# ndarrays); written without any of fastact's kernels.

def _conv_taps(x_shape, w_shape, stride, padding):
    """(P, Q, taps): for each output position (p, q), the (c, r, s, h, v) of every weight tap whose
    input pixel ``x[., c, h, v]`` lies inside the image (zero padding reads nothing)."""
    _, C, H, W = x_shape
    _, _, R, S = w_shape
    (sh, sw), (ph, pw) = pair(stride, "stride"), pair(padding, "padding")
    P, Q = (H + 2 * ph - R) // sh + 1, (W + 2 * pw - S) // sw + 1
    taps = {(p, q): [(c, r, s, p * sh - ph + r, q * sw - pw + s)
                     for c in range(C) for r in range(R) for s in range(S)
                     if 0 <= p * sh - ph + r < H and 0 <= q * sw - pw + s < W]
            for p in range(P) for q in range(Q)}
    return P, Q, taps


def conv2d_reference(x, weight, bias=None, stride=1, padding=0):
    """``y[n,k,p,q] = b[k] + sum_{c,r,s} w[k,c,r,s] x[n,c,p*sh-ph+r,q*sw-pw+s]``, zero outside x."""
    x, w = np.asarray(x, np.float64), np.asarray(weight, np.float64)
    N, K = x.shape[0], w.shape[0]
    P, Q, taps = _conv_taps(x.shape, w.shape, stride, padding)
    xl, wl = x.tolist(), w.tolist()
    bl = [0.0] * K if bias is None else np.asarray(bias, np.float64).tolist()
    y = np.zeros((N, K, P, Q))
    for n, k, (p, q) in itertools.product(range(N), range(K), taps):
        y[n, k, p, q] = sum(wl[k][c][r][s] * xl[n][c][h][v] for c, r, s, h, v in taps[p, q]) + bl[k]
    return y


def conv2d_backward_reference(dy, x, weight, stride=1, padding=0):
    """``(dx, dweight, dbias)`` of :func:`conv2d_reference` over the same taps, accumulating."""
    x, w, dy = (np.asarray(a, np.float64) for a in (x, weight, dy))
    N, K = x.shape[0], w.shape[0]
    _, _, taps = _conv_taps(x.shape, w.shape, stride, padding)
    xl, wl, dyl = x.tolist(), w.tolist(), dy.tolist()
    dx, dw = np.zeros(x.shape).tolist(), np.zeros(w.shape).tolist()
    for n, k, (p, q) in itertools.product(range(N), range(K), taps):
        g = dyl[n][k][p][q]
        for c, r, s, h, v in taps[p, q]:
            dx[n][c][h][v] += wl[k][c][r][s] * g
            dw[k][c][r][s] += xl[n][c][h][v] * g
    return np.array(dx), np.array(dw), dy.sum(axis=(0, 2, 3))


def _pool_size(n, k, s, pad, d, ceil):
    """PyTorch's pooling output size: windows spanning d*(k-1)+1; ``ceil`` rounds up, but the last
    window must start inside the input or the left padding."""
    span = d * (k - 1) + 1
    if not ceil:
        return (n + 2 * pad - span) // s + 1
    out = -(-(n + 2 * pad - span) // s) + 1
    return out - 1 if (out - 1) * s >= n + pad else out


def _windows(shape, kernel_size, stride, padding, dilation=1, ceil_mode=False):
    """Per output position, the list of input positions (h, w) of its window inside the image."""
    N, C, H, W = shape
    (kh, kw), (ph, pw) = pair(kernel_size, "kernel_size"), pair(padding, "padding")
    sh, sw = pair(kernel_size if stride is None else stride, "stride")
    dh, dw = pair(dilation, "dilation")
    P, Q = _pool_size(H, kh, sh, ph, dh, ceil_mode), _pool_size(W, kw, sw, pw, dw, ceil_mode)
    return P, Q, {(p, q): [(p * sh - ph + i * dh, q * sw - pw + j * dw) for i in range(kh) for j in range(kw)
                           if 0 <= p * sh - ph + i * dh < H and 0 <= q * sw - pw + j * dw < W]
                  for p in range(P) for q in range(Q)}, kh * kw


def _avg_divisors(shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """(P, Q, windows, {(p, q): divisor}): PyTorch's divisor of each window: ``divisor_override``, else
    the window's size clipped to the padded input (count_include_pad) or its count of input elements."""
    P, Q, win, _ = _windows(shape, kernel_size, stride, padding, 1, ceil_mode)
    (kh, kw), (ph, pw) = pair(kernel_size, "kernel_size"), pair(padding, "padding")
    sh, sw = pair(kernel_size if stride is None else stride, "stride")
    H, W = shape[2], shape[3]

    def padded(p, s, pad, k, n):
        return min(p * s - pad + k, n + pad) - (p * s - pad)

    div = {(p, q): divisor_override or (padded(p, sh, ph, kh, H) * padded(q, sw, pw, kw, W) if count_include_pad
                                        else len(win[p, q]))
           for p in range(P) for q in range(Q)}
    return P, Q, win, div


def _argmax(vals):
    """Index of the first maximum, a NaN beating every number (the first NaN wins)."""
    best = 0
    for i, v in enumerate(vals):
        b = vals[best]
        if (math.isnan(v) and not math.isnan(b)) or v > b:
            best = i
    return best


def max_pool2d_reference(x, kernel_size=2, stride=None, padding=0, dilation=1, ceil_mode=False):
    """The maximum of each window (padding never wins; the first maximum in row-major order)."""
    x = np.asarray(x, np.float64)
    P, Q, win, _ = _windows(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    y = np.full(x.shape[:2] + (P, Q), -np.inf)
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for (p, q), pos in win.items():
            if pos:
                vals = [x[n, c, h, v] for h, v in pos]
                y[n, c, p, q] = vals[_argmax(vals)]
    return y


def max_pool2d_backward_reference(dy, x, kernel_size=2, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Each window's gradient to its first maximum."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    _, _, win, _ = _windows(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    dx = np.zeros(x.shape)
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for (p, q), pos in win.items():
            if pos:
                h, v = pos[_argmax([x[n, c, h, v] for h, v in pos])]
                dx[n, c, h, v] += dy[n, c, p, q]
    return dx


def avg_pool2d_reference(x, kernel_size=2, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                         divisor_override=None):
    """The sum of each window over its input elements / PyTorch's divisor (by default the window's size,
    padding counted as zeros)."""
    x = np.asarray(x, np.float64)
    P, Q, win, div = _avg_divisors(x.shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                   divisor_override)
    y = np.zeros(x.shape[:2] + (P, Q))
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for (p, q), pos in win.items():
            y[n, c, p, q] = sum(x[n, c, h, v] for h, v in pos) / div[p, q]
    return y


def _avg_pool2d_backward_reference(dy, x, kernel_size=2, stride=None, padding=0, ceil_mode=False,
                                   count_include_pad=True, divisor_override=None):
    dy = np.asarray(dy, np.float64)
    _, _, win, div = _avg_divisors(np.shape(x), kernel_size, stride, padding, ceil_mode, count_include_pad,
                                   divisor_override)
    dx = np.zeros(np.shape(x))
    for n, c in itertools.product(range(dy.shape[0]), range(dy.shape[1])):
        for (p, q), pos in win.items():
            for h, v in pos:
                dx[n, c, h, v] += dy[n, c, p, q] / div[p, q]
    return dx


def _adaptive_bins(n, out):
    """PyTorch's adaptive pooling bins: [floor(i n / out), ceil((i + 1) n / out))."""
    return [(i * n // out, -((-(i + 1) * n) // out)) for i in range(out)]


def _adaptive_avg_pool2d_reference(x, output_size):
    x = np.asarray(x, np.float64)
    P, Q = pair(output_size, "output_size")
    y = np.zeros(x.shape[:2] + (P, Q))
    for p, (h0, h1) in enumerate(_adaptive_bins(x.shape[2], P)):
        for q, (w0, w1) in enumerate(_adaptive_bins(x.shape[3], Q)):
            y[:, :, p, q] = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3)) / ((h1 - h0) * (w1 - w0))
    return y


def _adaptive_avg_pool2d_backward_reference(dy, x, output_size):
    dy = np.asarray(dy, np.float64)
    dx = np.zeros(np.shape(x))
    P, Q = dy.shape[2:]
    for p, (h0, h1) in enumerate(_adaptive_bins(dx.shape[2], P)):
        for q, (w0, w1) in enumerate(_adaptive_bins(dx.shape[3], Q)):
            dx[:, :, h0:h1, w0:w1] += dy[:, :, p:p + 1, q:q + 1] / ((h1 - h0) * (w1 - w0))
    return dx


def linear_reference(x, weight, bias=None):
    """``y[..., o] = b[o] + sum_j x[..., j] w[o, j]``."""
    x, w = np.asarray(x, np.float64), np.asarray(weight, np.float64)
    x2 = x.reshape(-1, x.shape[-1]).tolist()
    wl = w.tolist()
    bl = [0.0] * w.shape[0] if bias is None else np.asarray(bias, np.float64).tolist()
    y = [[bl[o] + sum(a * b for a, b in zip(row, wl[o])) for o in range(w.shape[0])] for row in x2]
    return np.array(y).reshape(x.shape[:-1] + (w.shape[0],))


def linear_backward_reference(dy, x, weight):
    """``(dx, dweight, dbias)`` of :func:`linear_reference`."""
    x, w = np.asarray(x, np.float64), np.asarray(weight, np.float64)
    x2, dy2 = x.reshape(-1, x.shape[-1]), np.asarray(dy, np.float64).reshape(-1, w.shape[0])
    dx = np.array([[sum(dy2[i, o] * w[o, j] for o in range(w.shape[0])) for j in range(w.shape[1])]
                   for i in range(x2.shape[0])])
    dw = np.array([[sum(dy2[i, o] * x2[i, j] for i in range(x2.shape[0])) for j in range(w.shape[1])]
                   for o in range(w.shape[0])])
    return dx.reshape(x.shape), dw, dy2.sum(axis=0)


def batch_norm2d_reference(x, weight, bias, eps=1e-5):
    """Training-mode batch normalisation: each channel by its batch mean and biased variance."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    return xhat * np.asarray(weight, np.float64)[:, None, None] + np.asarray(bias, np.float64)[:, None, None]


def _batch_norm2d_backward_reference(dy, x, weight, eps=1e-5):
    """The textbook gradient (Ioffe and Szegedy 2015, section 3) with the biased variance."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * inv
    g = np.asarray(weight, np.float64)[:, None, None]
    dxhat = dy * g
    dvar = (dxhat * (x - mean) * -0.5 * inv ** 3).sum(axis=(0, 2, 3), keepdims=True)
    dmean = (-dxhat * inv).sum(axis=(0, 2, 3), keepdims=True) + dvar * (-2.0 * (x - mean)).mean(
        axis=(0, 2, 3), keepdims=True)
    dx = dxhat * inv + dvar * 2.0 * (x - mean) / m + dmean / m
    return dx, (dy * xhat).sum(axis=(0, 2, 3)), dy.sum(axis=(0, 2, 3))


def softmax_reference(x, axis=-1, log=False):
    """``exp(x - max) / sum(exp(x - max))`` along ``axis`` (its logarithm with ``log``), by rows."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    out = np.empty(x.shape)
    for idx in np.ndindex(x.shape[:-1]):
        row = x[idx].tolist()
        m = max(row)
        s = sum(math.exp(v - m) for v in row)
        out[idx] = [(v - m - math.log(s)) if log else math.exp(v - m) / s for v in row]
    return np.moveaxis(out, -1, axis)


def _softmax_backward_reference(dy, y, axis=-1, log=False):
    dy, y = np.asarray(dy, np.float64), np.asarray(y, np.float64)
    if log:
        return dy - np.exp(y) * dy.sum(axis=axis, keepdims=True)
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


def cross_entropy_reference(logits, target):
    """``mean_i(log(sum_j exp(l_ij - m_i)) + m_i - l_i,t_i)``, ``m_i`` the row maximum."""
    total = 0.0
    for row, t in zip(np.asarray(logits, np.float64).tolist(), np.asarray(target).tolist()):
        m = max(row)
        total += m + math.log(sum(math.exp(v - m) for v in row)) - row[t]
    return total / len(target)


def cross_entropy_backward_reference(logits, target, dy=1.0):
    """``dy * (softmax(logits) - onehot(target)) / N``."""
    logits = np.asarray(logits, np.float64)
    p = softmax_reference(logits, axis=1)
    p[np.arange(len(target)), np.asarray(target)] -= 1.0
    return dy * p / len(target)


# ------------------------------------------------------------------------------------------ entries

def _f():
    import fastact
    return fastact


def _conv_cases():
    cases = []
    for k, s, p in itertools.product((1, 3, 5), (1, 2), (0, 1, 2)):
        if 7 + 2 * p >= k and 6 + 2 * p >= k:
            cases.append(Case(f"k{k}-s{s}-p{p}", dict(x=(2, 3, 7, 6), weight=(4, 3, k, k), bias=(4,)),
                              dict(stride=s, padding=p)))
    for (kh, kw), st, pd in (((3, 1), (2, 1), (1, 0)), ((1, 5), (1, 3), (0, 2)), ((2, 4), (3, 2), (1, 1))):
        cases.append(Case(f"k{kh}x{kw}-s{st[0]}x{st[1]}-p{pd[0]}x{pd[1]}",
                          dict(x=(2, 3, 7, 6), weight=(4, 3, kh, kw), bias=(4,)),
                          dict(stride=st, padding=pd)))
    cases.append(Case("no-bias", dict(x=(2, 3, 5, 5), weight=(2, 3, 3, 3)), dict(padding=1), omit=("bias",)))
    cases.append(Case("one-image-one-channel", dict(x=(1, 1, 4, 4), weight=(1, 1, 3, 3), bias=(1,)),
                      dict(padding=1)))
    # 3x3 stride 1 runs by Winograd in float32 and by im2col in float64 unless told: each way, both dtypes,
    # on sizes that leave partial 4x4 tiles and on a batch of several chunks of tiles
    for algo in ("im2col", "winograd"):
        for p in (0, 1, 2):
            cases.append(Case(f"k3-s1-p{p}-{algo}", dict(x=(2, 3, 7, 6), weight=(4, 3, 3, 3), bias=(4,)),
                              dict(padding=p, algorithm=algo)))
        cases.append(Case(f"k3-p1x0-{algo}", dict(x=(3, 5, 9, 5), weight=(6, 5, 3, 3), bias=(6,)),
                          dict(padding=(1, 0), algorithm=algo)))
    cases.append(Case("k3-many-tiles-winograd", dict(x=(9, 8, 13, 15), weight=(7, 8, 3, 3), bias=(7,)),
                      dict(padding=1, algorithm="winograd")))
    return tuple(cases)


def _pool_cases(fn, max_pool):
    cases = []
    grid = [(k, s, p) for k, s, p in itertools.product((1, 3, 5), (1, 2), (0, 1, 2))]
    grid += [(2, None, 0), (2, None, 1), ((3, 2), (1, 2), (1, 0))]
    for k, s, p in grid:
        kh, kw = pair(k, "k")
        ph, pw = pair(p, "p")
        if 2 * ph > kh or 2 * pw > kw:  # PyTorch's rule: padding at most half the window
            continue
        name = f"k{k}-s{s}-p{p}".replace("(", "").replace(")", "").replace(", ", "x")
        cases.append(Case(name, dict(x=(2, 3, 7, 6)), dict(kernel_size=k, stride=s, padding=p),
                          distinct=max_pool))
    # PyTorch's other options: ceil_mode windows past the input (7 rows), dilation / the divisor rules
    extra = ([("k3-s2-p1-d2-ceil", dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True)),
              ("k2-ceil", dict(kernel_size=2, ceil_mode=True)),
              ("k2x3-s1x2-d2x1", dict(kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1)))] if max_pool else
             [("k3-s2-p1-ceil", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
              ("k3-s2-p1-ceil-no-pad-count", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                                  count_include_pad=False)),
              ("k2-s1-p1-divisor3", dict(kernel_size=2, stride=1, padding=1, divisor_override=3))])
    for name, params in extra:
        cases.append(Case(name, dict(x=(2, 3, 7, 6)), params, distinct=max_pool))
    return tuple(cases)


def _torch_conv(torch, t, p):
    return torch.nn.functional.conv2d(t["x"], t["weight"], t.get("bias"), p.get("stride", 1),
                                      p.get("padding", 0))


def _named_grads(a, dx, dweight, dbias):
    """A layer's ``(dx, dweight, dbias)`` by input name, without ``bias`` when the case has none."""
    g = {"x": dx, "weight": dweight}
    if "bias" in a:
        g["bias"] = dbias
    return g


def _conv_backward(dy, a, p, saved):
    return _named_grads(a, *_f().conv2d_backward(dy, a["x"], a["weight"], p.get("stride", 1),
                                                 p.get("padding", 0), algorithm=p.get("algorithm", "auto")))


def _conv_reference_backward(dy, a, p):
    return _named_grads(a, *conv2d_backward_reference(dy, a["x"], a["weight"], p.get("stride", 1),
                                                      p.get("padding", 0)))


def _bn_saving(a, p):
    return _f().batch_norm2d(a["x"], weight=a["weight"], bias=a["bias"], training=True, eps=p["eps"],
                             return_saved=True)


def _bn_backward(dy, a, p, saved):
    return _named_grads(a, *_f().batch_norm2d_backward(dy, a["x"], a["weight"], a["bias"], saved))


def _pool_op(name, reference, reference_backward, doc, cuda=None):
    """The entry of a windowed pool ``fastact.<name>(x, kernel_size, stride, padding, ...)``, its other
    options in PyTorch's order (max: dilation, ceil_mode; average: ceil_mode, count_include_pad,
    divisor_override)."""
    def window(p):
        if name == "max_pool2d":
            return (p["kernel_size"], p.get("stride"), p.get("padding", 0), p.get("dilation", 1),
                    p.get("ceil_mode", False))
        return (p["kernel_size"], p.get("stride"), p.get("padding", 0), p.get("ceil_mode", False),
                p.get("count_include_pad", True), p.get("divisor_override"))

    return LayerOp(
        name, ("x",), ("x",),
        forward=lambda a, p: getattr(_f(), name)(a["x"], *window(p)),
        backward=lambda dy, a, p, y: {"x": getattr(_f(), f"{name}_backward")(dy, a["x"], *window(p))},
        reference=lambda a, p: reference(a["x"], *window(p)),
        reference_backward=lambda dy, a, p: {"x": reference_backward(dy, a["x"], *window(p))},
        torch=lambda torch, t, p: getattr(torch.nn.functional, name)(t["x"], *window(p)),
        cases=_pool_cases(name, name == "max_pool2d"), cuda=cuda,
        bench=(Case("2x2 @32", dict(x=(64, 16, 32, 32)), dict(kernel_size=2)),), doc=doc)


def _softmax_op(name, log):
    cases = (Case("rows", dict(x=(5, 7)), dict(axis=-1)), Case("axis0", dict(x=(6, 4)), dict(axis=0)),
             Case("middle-axis", dict(x=(2, 5, 3)), dict(axis=1)),
             Case("one-row", dict(x=(1, 9)), dict(axis=-1)))
    return LayerOp(
        name, ("x",), ("x",),
        forward=lambda a, p: getattr(_f(), name)(a["x"], p["axis"]),
        backward=lambda dy, a, p, y: {"x": getattr(_f(), f"{name}_backward")(dy, y, p["axis"])},
        reference=lambda a, p: softmax_reference(a["x"], p["axis"], log),
        reference_backward=lambda dy, a, p: {"x": _softmax_backward_reference(
            dy, softmax_reference(a["x"], p["axis"], log), p["axis"], log)},
        torch=lambda torch, t, p: (torch.log_softmax if log else torch.softmax)(t["x"], p["axis"]),
        cases=cases, bench=(Case("64x1000", dict(x=(64, 1000)), dict(axis=-1)),),
        doc=("log(softmax(x))" if log else "exp(x) / sum(exp(x))") + " along an axis")


_ENTRIES = [
    LayerOp("conv2d", ("x", "weight", "bias"), ("x", "weight", "bias"),
            forward=lambda a, p: _f().conv2d(a["x"], a["weight"], a.get("bias"), p.get("stride", 1),
                                             p.get("padding", 0), algorithm=p.get("algorithm", "auto")),
            backward=_conv_backward,
            reference=lambda a, p: conv2d_reference(a["x"], a["weight"], a.get("bias"), p.get("stride", 1),
                                                    p.get("padding", 0)),
            reference_backward=_conv_reference_backward, torch=_torch_conv, cases=_conv_cases(),
            # float32 3x3 stride-1 runs by Winograd: its error is a few ulps of the layer's scale at
            # every output (tests/test_winograd.py holds it to that), so the absolute part scales
            tol={"float32": (1e-4, 1e-5), "float64": (1e-12, 1e-12)}, atol_scaled=True,
            cuda="conv2d", bench=(Case("3x3 16->16 @32", dict(x=(64, 16, 32, 32), weight=(16, 16, 3, 3),
                                                             bias=(16,)), dict(padding=1)),
                                   Case("3x3 32->32 @16", dict(x=(64, 32, 16, 16), weight=(32, 32, 3, 3),
                                                             bias=(32,)), dict(padding=1)),
                                   Case("3x3 16->16 @32, im2col", dict(x=(64, 16, 32, 32), weight=(16, 16, 3, 3),
                                                                      bias=(16,)), dict(padding=1, algorithm="im2col"))),
            doc="2-D convolution (cross-correlation): im2col + GEMM, or Winograd F(4x4, 3x3) for 3x3 stride 1"),
    LayerOp("linear", ("x", "weight", "bias"), ("x", "weight", "bias"),
            forward=lambda a, p: _f().linear(a["x"], a["weight"], a["bias"]),
            backward=lambda dy, a, p, saved: _named_grads(a, *_f().linear_backward(dy, a["x"],
                                                                                   a["weight"])),
            reference=lambda a, p: linear_reference(a["x"], a["weight"], a["bias"]),
            reference_backward=lambda dy, a, p: _named_grads(a, *linear_backward_reference(dy, a["x"],
                                                                                             a["weight"])),
            torch=lambda torch, t, p: torch.nn.functional.linear(t["x"], t["weight"], t["bias"]),
            cases=(Case("batch", dict(x=(5, 7), weight=(3, 7), bias=(3,))),
                   Case("one-row", dict(x=(1, 4), weight=(6, 4), bias=(6,))),
                   Case("leading-axes", dict(x=(2, 3, 5), weight=(4, 5), bias=(4,)))),
            cuda="linear", bench=(Case("1024->128", dict(x=(64, 1024), weight=(128, 1024), bias=(128,))),),
            doc="x @ weight.T + bias"),
    _pool_op("max_pool2d", max_pool2d_reference, max_pool2d_backward_reference, cuda="max_pool2d",
             doc="maximum over windows; a tie goes to the first maximum"),
    _pool_op("avg_pool2d", avg_pool2d_reference, _avg_pool2d_backward_reference,
             doc="mean over windows, padding counted as zeros"),
    LayerOp("adaptive_avg_pool2d", ("x",), ("x",),
            forward=lambda a, p: _f().adaptive_avg_pool2d(a["x"], p["output_size"]),
            backward=lambda dy, a, p, y: {"x": _f().adaptive_avg_pool2d_backward(dy, a["x"],
                                                                                p["output_size"])},
            reference=lambda a, p: _adaptive_avg_pool2d_reference(a["x"], p["output_size"]),
            reference_backward=lambda dy, a, p: {"x": _adaptive_avg_pool2d_backward_reference(
                dy, a["x"], p["output_size"])},
            torch=lambda torch, t, p: torch.nn.functional.adaptive_avg_pool2d(t["x"], p["output_size"]),
            cases=(Case("global", dict(x=(2, 3, 5, 4)), dict(output_size=1)),
                   Case("uneven-bins", dict(x=(2, 3, 7, 5)), dict(output_size=(3, 2))),
                   Case("upsampling-bins", dict(x=(1, 2, 3, 3)), dict(output_size=5))),
            bench=(Case("global 512 @7", dict(x=(64, 512, 7, 7)), dict(output_size=1)),),
            doc="mean over PyTorch's adaptive bins"),
    LayerOp("batch_norm2d", ("x", "weight", "bias"), ("x", "weight", "bias"),
            forward=lambda a, p: _f().batch_norm2d(a["x"], weight=a["weight"], bias=a["bias"], training=True,
                                                   eps=p["eps"]),
            saving=_bn_saving, backward=_bn_backward,
            reference=lambda a, p: batch_norm2d_reference(a["x"], a["weight"], a["bias"], p["eps"]),
            reference_backward=lambda dy, a, p: _named_grads(a, *_batch_norm2d_backward_reference(
                dy, a["x"], a["weight"], p["eps"])),
            torch=lambda torch, t, p: torch.nn.functional.batch_norm(
                t["x"], None, None, t["weight"], t["bias"], training=True, eps=p["eps"]),
            cases=(Case("small", dict(x=(4, 3, 5, 5), weight=(3,), bias=(3,)), dict(eps=1e-5)),
                   Case("one-pixel", dict(x=(8, 2, 1, 1), weight=(2,), bias=(2,)), dict(eps=1e-3))),
            tol={"float32": (1e-4, 1e-5), "float64": (1e-10, 1e-12)},
            bench=(Case("32 @16", dict(x=(64, 32, 16, 16), weight=(32,), bias=(32,)), dict(eps=1e-5)),),
            doc="training-mode batch normalisation, per channel"),
    _softmax_op("softmax", False),
    _softmax_op("log_softmax", True),
    LayerOp("cross_entropy", ("logits", "target"), ("logits",),
            forward=lambda a, p: _f().cross_entropy(a["logits"], a["target"]),
            backward=lambda dy, a, p, y: {"logits": _f().cross_entropy_backward(a["logits"], a["target"],
                                                                                dy=float(dy))},
            reference=lambda a, p: cross_entropy_reference(a["logits"], a["target"]),
            reference_backward=lambda dy, a, p: {"logits": cross_entropy_backward_reference(
                a["logits"], a["target"], float(dy))},
            torch=lambda torch, t, p: torch.nn.functional.cross_entropy(t["logits"], t["target"]),
            cases=(Case("batch", dict(logits=(6, 5), target=(6,)), dict(classes=5)),
                   Case("one-sample", dict(logits=(1, 3), target=(1,)), dict(classes=3))),
            cuda="cross_entropy",
            bench=(Case("64x10", dict(logits=(64, 10), target=(64,)), dict(classes=10)),),
            doc="mean cross-entropy of logits and class labels"),
]

#: {name: LayerOp}, in the order of the docs' table
OPS = {op.name: op for op in _ENTRIES}


def get(name):
    """The :class:`LayerOp` named ``name``; ValueError listing the names otherwise."""
    try:
        return OPS[name]
    except KeyError:
        raise ValueError(f"no layer op {name!r}; the table has {sorted(OPS)}") from None


def markdown_table():
    """The table of docs/design.md ("Layer ops"): each op, what it differentiates, how many cases the
    tests run, its PyTorch and CUDA counterparts and the benchmark shapes."""
    rows = ["| op | inputs | gradients | test cases | CUDA | benchmark shapes | what |",
            "|---|---|---|---|---|---|---|"]
    for op in OPS.values():
        rows.append(f"| `{op.name}` | {', '.join(op.inputs)} | {', '.join(op.grads)} | {len(op.cases)} | "
                    f"{'`fastact.cuda.' + op.cuda + '`' if op.cuda else ''} | "
                    f"{'; '.join(c.name for c in op.bench)} | {op.doc} |")
    return "\n".join(rows) + "\n"
