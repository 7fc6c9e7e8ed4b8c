"""Finite-difference gradient checks.

``gradcheck(fn, backward, inputs)`` evaluates ``L = sum(dy * fn(*inputs))`` for a random ``dy`` and
compares the analytic ``backward(dy, *inputs)`` with central differences of ``L`` in float64, element
by element. It raises :class:`GradcheckError` naming the input, the worst element and both values, so a
failing check can never pass silently.
"""

import numpy as np

__all__ = ["GradcheckError", "gradcheck", "gradcheck_module"]


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with finite differences."""


def _as_tuple(g):
    return tuple(g) if isinstance(g, (tuple, list)) else (g,)


def gradcheck(fn, backward, inputs, *, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0):
    """Check ``backward`` against central differences of ``fn``.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs)`` -> array (or float).
    backward : callable
        ``backward(dy, *inputs)`` -> one gradient per input (a tuple, or a single array when there is
        one input); ``None`` for an input that has no gradient (integer labels, say).
    inputs : sequence
        The inputs. Floating-point arrays are checked (as float64 copies); others are passed through.
    eps, atol, rtol : float
        Step of the central difference and the tolerance ``|a - n| <= atol + rtol * |n|``.
    seed : int
        Seed of the random ``dy``.

    Returns
    -------
    bool
        True; a mismatch raises instead.

    Raises
    ------
    GradcheckError
        With the index of the input, the worst element's index and the analytic and numerical values.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> fa.gradcheck(fa.tanh, fa.tanh_backward, (np.linspace(-2, 2, 5),))
    True
    """
    inputs = [np.array(a, dtype=np.float64) if _is_float(a) else a for a in inputs]
    y = np.asarray(fn(*inputs), dtype=np.float64)
    rng = np.random.default_rng(seed)
    dy = rng.standard_normal(y.shape)
    grads = _as_tuple(backward(dy if y.ndim else float(dy), *inputs))
    if len(grads) != len(inputs):
        raise GradcheckError(f"backward returned {len(grads)} gradients for {len(inputs)} inputs")
    for k, (a, g) in enumerate(zip(inputs, grads)):
        if not _is_float(a):
            continue
        if g is None:
            raise GradcheckError(f"backward returned None for floating-point input {k}")
        g = np.asarray(g, dtype=np.float64)
        if g.shape != np.shape(a):
            raise GradcheckError(f"gradient of input {k} has shape {g.shape}, input has {np.shape(a)}")
        num = np.zeros(np.shape(a))
        flat = a.reshape(-1)  # a view: a is a fresh contiguous float64 copy
        nflat = num.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            hi = np.sum(dy * np.asarray(fn(*inputs), dtype=np.float64))
            flat[i] = old - eps
            lo = np.sum(dy * np.asarray(fn(*inputs), dtype=np.float64))
            flat[i] = old
            nflat[i] = (hi - lo) / (2 * eps)
        err = np.abs(g - num) - (atol + rtol * np.abs(num))
        bad = ~(err <= 0)  # NaN counts as a failure
        if np.any(bad):
            j = np.unravel_index(int(np.nanargmax(np.where(bad, np.nan_to_num(err, nan=np.inf), -np.inf))),
                                 num.shape)
            raise GradcheckError(
                f"input {k} (shape {num.shape}): gradient mismatch at index {tuple(int(t) for t in j)}: "
                f"analytic {g[j]!r}, numerical {num[j]!r} (atol={atol}, rtol={rtol}; "
                f"{int(bad.sum())} of {bad.size} elements out of tolerance)")
    return True


def _is_float(a):
    return np.asarray(a).dtype.kind == "f"


def gradcheck_module(module, x, target, *, eps=1e-6, atol=1e-5, rtol=1e-3, max_elements=64, seed=0):
    """Check every parameter's and the input's gradient of ``cross_entropy(module(x), target)``.

    The module is converted to float64 in place (``module.astype``) for the check. For each parameter
    (and ``x``) up to ``max_elements`` elements, chosen at random with ``seed``, are perturbed by
    ``+-eps``; their central differences must match the analytic gradient from ``module.backward``.

    Returns True or raises :class:`GradcheckError` naming the parameter, element and both values.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> from fastact import models
    >>> net = models.vgg([2, "M"], in_channels=1, num_classes=3, input_size=4, hidden=(4,))
    >>> x = np.random.default_rng(0).standard_normal((2, 1, 4, 4))
    >>> fa.gradcheck_module(net, x, np.array([0, 2]))
    True
    """
    from .loss import cross_entropy, cross_entropy_backward

    module.astype(np.float64)
    x = np.array(x, dtype=np.float64)
    module.train()
    for p in module.parameters():
        p.grad[...] = 0
    logits = module(x)
    dx = module.backward(cross_entropy_backward(logits, target))
    checks = [("input", x, np.asarray(dx))] + [(name, p.data, p.grad.copy())
                                               for name, p in module.named_parameters()]
    rng = np.random.default_rng(seed)

    def loss():
        return cross_entropy(module(x), target)

    for name, arr, grad in checks:
        flat = arr.reshape(-1)
        gflat = grad.reshape(-1)
        idx = np.arange(flat.size) if flat.size <= max_elements else \
            rng.choice(flat.size, max_elements, replace=False)
        for i in idx:
            old = flat[i]
            flat[i] = old + eps
            hi = loss()
            flat[i] = old - eps
            lo = loss()
            flat[i] = old
            num = (hi - lo) / (2 * eps)
            if not abs(gflat[i] - num) <= atol + rtol * abs(num):
                raise GradcheckError(
                    f"{name} (shape {arr.shape}): gradient mismatch at flat index {int(i)}: analytic "
                    f"{gflat[i]!r}, numerical {num!r} (atol={atol}, rtol={rtol})")
    return True
