"""Conv layer report: fastact's conv3x3 + bias + ReLU against NumPy and PyTorch, side by side in one process.

    PYTHONPATH=. python bench/conv_report.py [--repeat 7] [--quick | --layers | --rule | --depthwise | --accuracy | --threads]

For each layer shape of the peer table in docs/performance.md and float32/float64 it prints, as a
markdown table: fastact's forward time and GFLOP/s (a conv does 2*N*K*C*R*S*P*Q FLOPs), the NumPy
baseline a user would write (im2col with ``sliding_window_view`` + ``np.tensordot`` + bias +
``np.maximum``), PyTorch (``F.relu(F.conv2d(...))``, 2 threads), the ratios (peer time / fastact time:
above 1.00x fastact is faster), forward+backward times, and fastact's GFLOP/s as a share of the GEMM rate of NumPy's BLAS
measured in the same run (square 1024..2048 matmuls; SGEMM for float32 rows, DGEMM for float64): the
floor of any "im2col then BLAS" convolution.

Then the extra memory of one ``fastact.conv2d`` call beyond its input and output (tracemalloc sees
NumPy's allocations), cold (fresh workspace) and warm (workspace reused), against the size of one tile's
column buffer; and, for the N=64 64->64 layer, the three forward stages (im2col, GEMM, epilogue) timed
separately through fastact/conv.py's internals.

The machine is shared and noisy: every figure is a median of repeats, the implementations are timed
interleaved (fastact, NumPy, PyTorch, fastact, ...) so that a burst of noise hits all alike, and each
sample is the second of two back-to-back calls, so that no implementation pays for the previous one's
spinning thread pool (:func:`fastact.benchmark.median_time`). ``bench/test_layers.py`` imports the
shapes and the baselines from here.
"""

import argparse
import sys
import tracemalloc

import numpy as np

import fastact as fa
from fastact import benchmark


# name -> (N, C, H, W, K); every layer is a 3x3 conv with padding 1, stride 1
SHAPES = {
    "N32 3->32 @32": (32, 3, 32, 32, 32),
    "N64 64->64 @32": (64, 64, 32, 32, 64),
    "net 3->16 @32": (64, 3, 32, 32, 16),
    "net 16->16 @32": (64, 16, 32, 32, 16),
    "net 16->32 @16": (64, 16, 16, 16, 32),
    "net 32->32 @16": (64, 32, 16, 16, 32),
    "net 32->64 @8": (64, 32, 8, 8, 64),
    "net 64->64 @8": (64, 64, 8, 8, 64),
}
NET_LAYERS = [k for k in SHAPES if k.startswith("net ")]
R = S = 3
PAD = 1
DTYPES = (np.float32, np.float64)


def flops(shape):
    N, C, H, W, K = shape
    P, Q = H + 2 * PAD - R + 1, W + 2 * PAD - S + 1
    return 2 * N * K * C * R * S * P * Q


def make_inputs(shape, dtype, seed=0):
    N, C, H, W, K = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = (rng.standard_normal((K, C, R, S)) * np.sqrt(2.0 / (C * R * S))).astype(dtype)
    b = (0.1 * rng.standard_normal(K)).astype(dtype)
    dy = rng.standard_normal((N, K, H, W)).astype(dtype)
    return x, w, b, dy


# ------------------------------------------------------------------------------------ implementations

def numpy_conv_relu(x, w, b, pad=PAD):
    """What a NumPy user writes: im2col through stride tricks, one tensordot, bias, ReLU."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, w.shape[2:], axis=(2, 3))  # (N, C, P, Q, R, S)
    y = np.tensordot(win, w, axes=((1, 4, 5), (1, 2, 3)))                           # (N, P, Q, K)
    return np.maximum(y.transpose(0, 3, 1, 2) + b[:, None, None], 0)


def fastact_fwd(x, w, b, algorithm="auto"):
    return fa.conv2d(x, w, b, 1, PAD, activation="relu", algorithm=algorithm)


def fastact_fwd_bwd(x, w, b, dy):
    """One training step's conv work: forward keeping the pre-activation, then the fused backward."""
    y, z = fa.conv2d(x, w, b, 1, PAD, activation="relu", return_preactivation=True)
    return fa.conv2d_backward(dy, x, w, 1, PAD, preactivation=z, activation="relu")


#: PyTorch's threads: the machine's 2 cores, as fastact uses
TORCH_THREADS = 2


def torch_fns(torch, x, w, b, dy):
    F = torch.nn.functional
    tx, tw, tb, tdy = (torch.from_numpy(np.ascontiguousarray(a)) for a in (x, w, b, dy))

    def fwd():
        with torch.no_grad():
            return F.relu(F.conv2d(tx, tw, tb, padding=PAD))

    gx, gw, gb = (t.clone().requires_grad_(True) for t in (tx, tw, tb))

    def fwd_bwd():
        gx.grad = gw.grad = gb.grad = None
        y = F.relu(F.conv2d(gx, gw, gb, padding=PAD))
        y.backward(tdy)
        return gx.grad

    return fwd, fwd_bwd


# ------------------------------------------------------------------------------------------ timing

def interleaved(fns, repeat, budget=6.0):
    """Median seconds of each fn in ``fns`` (a dict): :func:`fastact.benchmark.median_time`, with fewer
    repeats (at least 3) when one measurement would take longer than ``budget`` seconds."""
    return benchmark.median_time(fns, repeat, budget=budget)


def gemm_rates(dtype, sizes=(1024, 1536, 2048), repeat=5):
    """GFLOP/s of NumPy's matmul on square matrices of each size (2 n^3 FLOPs)."""
    rng = np.random.default_rng(0)
    out = {}
    for n in sizes:
        a = rng.standard_normal((n, n)).astype(dtype)
        bm = rng.standard_normal((n, n)).astype(dtype)
        c = np.empty((n, n), dtype)
        t = interleaved({"mm": lambda: np.matmul(a, bm, out=c)}, repeat)["mm"]
        out[n] = 2 * n ** 3 / t / 1e9
    return out


# ------------------------------------------------------------------------------------------ memory

def conv_memory(shape, dtype):
    """(cold extra bytes, warm extra bytes, column buffer bytes of one tile, images per tile)."""
    x, w, b, _ = make_inputs(shape, dtype)
    N, C, H, W, K = shape
    P, Q = H, W
    nb = fa.conv.images_per_tile(x.shape, w.shape, 1, PAD, dtype)
    col_bytes = C * R * S * nb * P * Q * np.dtype(dtype).itemsize
    y_bytes = N * K * P * Q * np.dtype(dtype).itemsize
    res = []
    for cold in (True, False):
        if cold:
            fa.conv.release_workspaces()  # this thread's workspace: dropped, as in a new process
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        y = fastact_fwd(x, w, b)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        res.append(peak - base - y_bytes)
        del y
    return res[0], res[1], col_bytes, nb


# ------------------------------------------------------------------------------------------ stages

def stage_times(shape, dtype, repeat=7):
    """Median seconds of the im2col forward's three stages (summed over tiles) and of the whole
    conv2d by im2col."""
    matmul = np.matmul
    x, w, b, _ = make_inputs(shape, dtype)
    N, C, H, W = x.shape
    K = w.shape[0]
    P, Q = H, W
    CRS, PQ = C * R * S, P * Q
    nb = fa.conv.images_per_tile(x.shape, w.shape, 1, PAD, dtype)
    w2 = w.reshape(K, CRS)
    y = np.empty((N, K, P, Q), dtype)
    tiles = [(n0, min(nb, N - n0)) for n0 in range(0, N, nb)]
    # one column buffer per tile size, reused across tiles as conv2d reuses its workspace; one GEMM
    # output per tile, so that the epilogue stage (timed on its own) reads every tile's own result
    cols = {m: np.empty((CRS, m * PQ), dtype) for _, m in tiles}
    gs = [np.empty((K, m * PQ), dtype) for _, m in tiles]

    def im2col():
        for n0, m in tiles:
            fa.im2col(x[n0:n0 + m], (R, S), 1, PAD, out=cols[m])

    def gemm():  # times the GEMMs on whatever the column buffers hold: the cost does not depend on it
        for i, (_, m) in enumerate(tiles):
            matmul(w2, cols[m], out=gs[i])

    def epilogue():
        for i, (n0, m) in enumerate(tiles):
            fa.gemm_epilogue(gs[i].reshape(K, m, PQ), b, y[n0:n0 + m].reshape(m, K, PQ), activation="relu")

    t = interleaved({"im2col": im2col, "GEMM": gemm, "epilogue": epilogue,
                     "conv2d (all)": lambda: fastact_fwd(x, w, b, "im2col")}, repeat)
    # the three stages, run in order tile by tile, really compute the conv
    for i, (n0, m) in enumerate(tiles):
        fa.im2col(x[n0:n0 + m], (R, S), 1, PAD, out=cols[m])
        matmul(w2, cols[m], out=gs[i])
    epilogue()
    np.testing.assert_allclose(y, fastact_fwd(x, w, b, "im2col"), rtol=1e-5, atol=1e-5)
    isz = x.dtype.itemsize
    work = {"im2col": (f"{CRS * N * PQ * isz / t['im2col'] / 1e9:.1f} GB/s written "
                       f"(col {CRS}x{nb * PQ}, {len(tiles)} tile(s) of {nb} images)"),
            "GEMM": f"{2 * K * CRS * N * PQ / t['GEMM'] / 1e9:.1f} GFLOP/s ({K}x{CRS} @ {CRS}x{nb * PQ})",
            "epilogue": f"{2 * K * N * PQ * isz / t['epilogue'] / 1e9:.1f} GB/s (read g, write y)",
            "conv2d (all)": f"{flops(shape) / t['conv2d (all)'] / 1e9:.1f} GFLOP/s"}
    return t, work


# ------------------------------------------------------------------------------------------ report

def _x(r):
    return "-" if r is None else f"{r:.2f}x"


def _ms(t):
    return "-" if t is None else f"{1e3 * t:.2f}"


def run(repeat=7, shapes=None, dtypes=DTYPES, backward=True):
    torch = benchmark.load_torch(TORCH_THREADS)
    rows = []
    gemm = {np.dtype(dt): gemm_rates(dt) for dt in dtypes}
    for name in shapes or SHAPES:
        shape = SHAPES[name]
        for dt in dtypes:
            x, w, b, dy = make_inputs(shape, dt)
            fns = {"fastact": lambda: fastact_fwd(x, w, b), "numpy": lambda: numpy_conv_relu(x, w, b)}
            if torch is not None:
                tf, tfb = torch_fns(torch, x, w, b, dy)
                fns["torch"] = tf
            if backward:
                fns["fastact fwd+bwd"] = lambda: fastact_fwd_bwd(x, w, b, dy)
                if torch is not None:
                    fns["torch fwd+bwd"] = tfb
            np.testing.assert_allclose(fastact_fwd(x, w, b), numpy_conv_relu(x, w, b),
                                       rtol=1e-4, atol=1e-4)
            t = interleaved(fns, repeat)
            rows.append(dict(shape=name, dtype=np.dtype(dt).name, flops=flops(shape), t=t,
                             gemm=max(gemm[np.dtype(dt)].values())))
    return rows, gemm


def markdown(rows, gemm):
    out = []
    for dt, rates in gemm.items():
        kind = "SGEMM" if dt == np.float32 else "DGEMM"
        out.append(f"{kind} (np.matmul, same run): " +
                   ", ".join(f"{n}: {r:.0f} GFLOP/s" for n, r in rates.items()))
    out.append("")
    out.append("| layer | dtype | fastact ms | GFLOP/s | % of GEMM | NumPy ms | vs NumPy | PyTorch ms | "
               "vs PyTorch | fastact fwd+bwd ms | PyTorch fwd+bwd ms | vs PyTorch |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    totals = {}
    for r in rows:
        t = r["t"]
        fa_t = t["fastact"]
        gf = r["flops"] / fa_t / 1e9
        tn, tt = t.get("numpy"), t.get("torch")
        fb, tb = t.get("fastact fwd+bwd"), t.get("torch fwd+bwd")
        out.append(f"| {r['shape']} | {r['dtype']} | {_ms(fa_t)} | {gf:.1f} | {100 * gf / r['gemm']:.0f}% | "
                   f"{_ms(tn)} | {_x(tn and tn / fa_t)} | {_ms(tt)} | {_x(tt and tt / fa_t)} | "
                   f"{_ms(fb)} | {_ms(tb)} | {_x(tb and fb and tb / fb)} |")
        if r["shape"] in NET_LAYERS:
            acc = totals.setdefault(r["dtype"], {})
            for k, v in t.items():
                acc[k] = acc.get(k, 0.0) + v
            acc["flops"] = acc.get("flops", 0) + r["flops"]
    for dt, acc in totals.items():
        fa_t = acc["fastact"]
        tn, tt = acc.get("numpy"), acc.get("torch")
        fb, tb = acc.get("fastact fwd+bwd"), acc.get("torch fwd+bwd")
        gf = acc["flops"] / fa_t / 1e9
        g = next(r["gemm"] for r in rows if r["dtype"] == dt)
        out.append(f"| **net total (6 layers)** | {dt} | {_ms(fa_t)} | {gf:.1f} | {100 * gf / g:.0f}% | "
                   f"{_ms(tn)} | {_x(tn and tn / fa_t)} | {_ms(tt)} | {_x(tt and tt / fa_t)} | "
                   f"{_ms(fb)} | {_ms(tb)} | {_x(tb and fb and tb / fb)} |")
    return "\n".join(out)


def memory_markdown(shapes=None, dtypes=DTYPES):
    out = ["| layer | dtype | images/tile | one tile's col buffer MiB | extra peak, cold MiB | "
           "extra peak, warm MiB | cold / col |",
           "|---|---|---|---|---|---|---|"]
    for name in shapes or SHAPES:
        for dt in dtypes:
            cold, warm, col, nb = conv_memory(SHAPES[name], dt)
            out.append(f"| {name} | {np.dtype(dt).name} | {nb} | {col / 2**20:.2f} | {cold / 2**20:.2f} | "
                       f"{warm / 2**20:.2f} | {cold / col:.2f} |")
    return "\n".join(out)


def stages_markdown(name="N64 64->64 @32", dtypes=DTYPES):
    out = [f"Forward stages of {name} by im2col (3x3, pad 1, bias + ReLU), median ms:", "",
           "| dtype | stage | ms | share of conv2d | rate |", "|---|---|---|---|---|"]
    for dt in dtypes:
        t, work = stage_times(SHAPES[name], dt)
        whole = t["conv2d (all)"]
        for k in ("im2col", "GEMM", "epilogue", "conv2d (all)"):
            out.append(f"| {np.dtype(dt).name} | {k} | {_ms(t[k])} | {100 * t[k] / whole:.0f}% | {work[k]} |")
    return "\n".join(out)


#: the ResBlock conv of models.net_res_deep(32, 10): 3x3, bias=False, no activation (BatchNorm follows)
RES_CONV = "res 32->32 @16 (no bias)"


def backward_ratio(repeat=9, shapes=None, dtype=np.float32):
    """[(layer, forward s, backward s)]: a training forward (keeping the pre-activation) and the
    backward with the input gradient, timed separately, interleaved (the issue's target: backward <= 1.7x
    forward). The net layers have bias + ReLU; ``RES_CONV`` is NetResDeep's conv (no bias, no act)."""
    rows = []
    for name in (shapes or NET_LAYERS + [RES_CONV]):
        if name == RES_CONV:
            x, w, _, dy = make_inputs((64, 32, 16, 16, 32), dtype)
            fwd = lambda: fa.conv2d(x, w, None, 1, PAD)
            bwd = lambda: fa.conv2d_backward(dy, x, w, 1, PAD)
        else:
            x, w, b, dy = make_inputs(SHAPES[name], dtype)
            _, z = fa.conv2d(x, w, b, 1, PAD, activation="relu", return_preactivation=True)
            fwd = lambda: fa.conv2d(x, w, b, 1, PAD, activation="relu", return_preactivation=True)
            bwd = lambda: fa.conv2d_backward(dy, x, w, 1, PAD, preactivation=z, activation="relu")
        t = interleaved({"fwd": fwd, "bwd": bwd}, repeat)
        rows.append((name, t["fwd"], t["bwd"]))
    return rows


def pool_fight(repeat=31, n=1 << 23):
    """{path: (idle s, after-conv s)}: a Numba (TBB) kernel, ``fa.relu(x, out=)`` on ``n`` float32 values
    (64 MiB in and out: out of cache whatever ran before, so only the threads differ), timed as the second
    of two calls ("idle") and right after a conv forward of the NetResDeep layer ("after"), for each
    GEMM path; and, for reference, right after one multi-threaded np.matmul of the same FLOPs
    (32x288 @ 288x16384), which is what the NumPy path runs for larger layers. OpenBLAS's workers spin
    ~100 ms after a multi-threaded GEMM and take the cores from the TBB kernel that follows; the target is
    "after" within 10% of "idle"."""
    import time
    v = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    out = np.empty_like(v)
    x, w, _, _ = make_inputs((64, 32, 16, 16, 32), np.float32)
    res = {}
    saved = fa.config.CONV_NOPYTHON_GEMM
    paths = {"conv2d, nopython GEMM (one pool)": True, "conv2d, np.matmul per image": False,
             "np.matmul 32x288 @ 288x16384 (2 BLAS threads)": None}
    samples = {k: ([], []) for k in paths}
    a2, b2 = np.ones((32, 288), np.float32), np.ones((288, 16384), np.float32)
    try:
        for _ in range(repeat):
            for k, flag in paths.items():
                fa.config.CONV_NOPYTHON_GEMM = bool(flag)
                fa.relu(v, out=out)
                t0 = time.perf_counter()
                fa.relu(v, out=out)
                samples[k][0].append(time.perf_counter() - t0)
                if flag is None:
                    np.matmul(a2, b2)
                else:
                    fa.conv2d(x, w, None, 1, PAD)
                t0 = time.perf_counter()
                fa.relu(v, out=out)
                samples[k][1].append(time.perf_counter() - t0)
    finally:
        fa.config.CONV_NOPYTHON_GEMM = saved
    for k, (idle, after) in samples.items():
        res[k] = (float(np.median(idle)), float(np.median(after)))
    return res


def backward_ratio_markdown(repeat=9):
    out = ["Training forward (keeping z) and backward (with dx) of each conv, float32, median ms:", "",
           "| layer | forward | backward | backward / forward |", "|---|---|---|---|"]
    for name, f, b in backward_ratio(repeat):
        out.append(f"| {name} | {_ms(f)} | {_ms(b)} | {b / f:.2f}x |")
    return "\n".join(out)


def pool_fight_markdown(repeat=31):
    out = ["A Numba kernel (relu, 8M float32) idle and right after a conv forward (64x32x16x16, 32->32), "
           "median ms:", "", "| run before | idle | after | after / idle |", "|---|---|---|---|"]
    for k, (idle, after) in pool_fight(repeat).items():
        out.append(f"| {k} | {_ms(idle)} | {_ms(after)} | {after / idle:.2f}x |")
    return "\n".join(out)


def layer_step_fns(name, lib, torch=None):
    """(training forward, backward) of net layer ``name`` (3x3 + bias + ReLU, float32) for ``lib``:
    fastact by ``'im2col'`` or ``'winograd'`` (forward keeping the pre-activation; the backward is the
    same for both), or ``'torch'`` (the forward builds autograd's graph, the backward runs it)."""
    x, w, b, dy = make_inputs(SHAPES[name], np.float32)
    if lib != "torch":
        _, z = fa.conv2d(x, w, b, 1, PAD, activation="relu", return_preactivation=True, algorithm=lib)
        return (lambda: fa.conv2d(x, w, b, 1, PAD, activation="relu", return_preactivation=True, algorithm=lib),
                lambda: fa.conv2d_backward(dy, x, w, 1, PAD, preactivation=z, activation="relu"))
    F = torch.nn.functional
    gx, gw, gb = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, w, b))
    tdy = torch.from_numpy(dy)

    def fwd():
        return F.relu(F.conv2d(gx, gw, gb, padding=PAD))
    y = fwd()
    return fwd, lambda: torch.autograd.grad(y, (gx, gw, gb), tdy, retain_graph=True)


def layer_times(libs, repeat=9, names=None):
    """{layer: {"<lib> fwd": s, "<lib> bwd": s}} for every net layer, the libraries interleaved."""
    torch = benchmark.load_torch(TORCH_THREADS) if "torch" in libs else None
    out = {}
    for name in names or NET_LAYERS:
        fns = {}
        for lib in libs:
            fns[f"{lib} fwd"], fns[f"{lib} bwd"] = layer_step_fns(name, lib, torch)
        out[name] = interleaved(fns, repeat)
    return out


def layers_markdown(repeat=9, alone=False):
    """Per net layer, training forward and backward (ms): fastact by im2col and by Winograd, and
    PyTorch; ``alone``: PyTorch measured in a child process of its own (no fastact thread ever ran
    there), else interleaved with fastact in this process."""
    libs = ("im2col", "winograd") if alone else ("im2col", "winograd", "torch")
    t = layer_times(libs, repeat)
    if alone:
        import json
        import subprocess
        done = subprocess.run([sys.executable, __file__, "--layers-peer", "--repeat", str(repeat)],
                              capture_output=True, text=True, check=True)
        peer = json.loads(done.stdout.strip().splitlines()[-1])
        for name in t:
            t[name].update(peer[name])
    how = "each library alone in its process" if alone else "interleaved in one process"
    lines = [f"Training forward (keeping the pre-activation) and backward of 3x3 + bias + ReLU layers, "
             f"batch 64, float32, {how}; ms, medians of {repeat}; ratio = PyTorch / fastact.\n",
             "| layer | im2col fwd | Winograd fwd | PyTorch fwd | fwd ratio | fastact bwd | PyTorch bwd | bwd ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in t.items():
        best_bwd = min(r["im2col bwd"], r["winograd bwd"])
        lines.append(f"| {name[4:]} | {_ms(r['im2col fwd'])} | {_ms(r['winograd fwd'])} | {_ms(r['torch fwd'])} | "
                     f"{r['torch fwd'] / r['winograd fwd']:.2f}x | {_ms(best_bwd)} | {_ms(r['torch bwd'])} | "
                     f"{r['torch bwd'] / best_bwd:.2f}x |")
    return "\n".join(lines)


def accuracy_markdown(seeds=3):
    """Worst float32 error of each algorithm on every net layer (batch 8; x standard normal, weights
    Kaiming-scaled), against float64 im2col, in ulps of the layer's scale: the largest sum of
    |w| |x| + |b| over an output's window (float32's eps times that is one ulp of the largest output
    the layer could produce). The per-output column divides instead by each output's own sum."""
    eps = np.finfo(np.float32).eps
    lines = ["| layer | im2col, ulps of the layer's scale | Winograd | im2col, ulps of each output's sum | "
             "Winograd |", "|---|---|---|---|---|"]
    for name in NET_LAYERS:
        worst = np.zeros(4)
        for seed in range(seeds):
            N, C, H, W, K = SHAPES[name]
            x, w, b, _ = make_inputs((8, C, H, W, K), np.float32, seed)
            x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
            want = fa.conv2d(x64, w64, b64, 1, PAD, algorithm="im2col")
            scale = fa.conv2d(np.abs(x64), np.abs(w64), np.abs(b64), 1, PAD, algorithm="im2col")
            for i, algo in enumerate(("im2col", "winograd")):
                err = np.abs(fa.conv2d(x, w, b, 1, PAD, algorithm=algo) - want)
                worst[i] = max(worst[i], err.max() / (eps * scale.max()))
                worst[2 + i] = max(worst[2 + i], (err / (eps * scale)).max())
        lines.append(f"| {name[4:]} | " + " | ".join(f"{v:.2f}" for v in worst) + " |")
    return "\n".join(lines)


#: (C, K, H): the layers of the reference nets (digits, mnist, cifar) and narrower first layers
RULE_SHAPES = [(1, 16, 8), (16, 16, 8), (16, 32, 4), (32, 32, 4), (1, 16, 28), (16, 16, 28), (16, 32, 14),
               (32, 32, 14), (32, 64, 7), (64, 64, 7), (3, 16, 32), (3, 32, 32), (8, 8, 32), (8, 16, 32),
               (16, 16, 32), (16, 32, 16), (32, 32, 16), (32, 64, 8), (64, 64, 8)]


def rule_markdown(repeat=11):
    """The measurements behind ``conv2d(algorithm='auto')``: the training forward (3x3, padding 1, bias +
    ReLU, keeping the pre-activation; batch 64, float32) by im2col and by Winograd, interleaved, over
    :data:`RULE_SHAPES`."""
    lines = ["| layer | im2col ms | Winograd ms | im2col / Winograd | auto picks |", "|---|---|---|---|---|"]
    for C, K, H in RULE_SHAPES:
        x, w, b, _ = make_inputs((64, C, H, H, K), np.float32)
        fns = {a: (lambda a=a: fa.conv2d(x, w, b, 1, PAD, activation="relu", return_preactivation=True,
                                         algorithm=a)) for a in ("im2col", "winograd")}
        t = interleaved(fns, repeat)
        pick = fa.conv.choose_algorithm("auto", x.shape, w.shape, 1, np.float32)
        lines.append(f"| {C}->{K} @{H} | {_ms(t['im2col'])} | {_ms(t['winograd'])} | "
                     f"{t['im2col'] / t['winograd']:.2f}x | {pick} |")
    return "\n".join(lines)


#: (C, H, stride): MobileNetV2's depthwise 3x3 layers at CIFAR size (32x32 input, the first conv at
#: stride 2), batch 64; H is the layer's input size
DEPTHWISE_SHAPES = [(32, 16, 1), (96, 16, 2), (144, 8, 1), (144, 8, 2), (192, 4, 1), (192, 4, 2), (384, 2, 1),
                    (576, 2, 1), (576, 2, 2), (960, 1, 1)]


def copy_bandwidth(nbytes=64 << 20, repeat=9):
    """Bytes per second moved (read + written) by ``np.copyto`` of a ``nbytes`` float32 array: the
    memory floor's rate."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    t = interleaved({"copy": lambda: np.copyto(dst, src)}, repeat)["copy"]
    return 2 * nbytes / t


def depthwise_unit_fns(C, H, st, torch=None, N=64, dtype=np.float32):
    """(fastact forward, fastact backward, PyTorch forward, PyTorch backward, floor bytes forward,
    floor bytes backward) of MobileNetV2's unit: depthwise 3x3 (padding 1, no bias) + BatchNorm2d in
    training mode + ReLU6. fastact: ``conv2d`` then ``batch_norm2d(activation='relu6')`` (one pass for
    BatchNorm and ReLU6), backward ``batch_norm2d_backward`` then ``conv2d_backward``; PyTorch:
    ``conv2d(groups=C)``, ``batch_norm(training=True)``, ``hardtanh(0, 6)``, autograd's backward. The
    floor: the bytes the unit must move at least (forward: read x, write y; backward: read dy and x,
    write dx)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, H)).astype(dtype)
    w = (rng.standard_normal((C, 1, 3, 3)) / 3).astype(dtype)
    g = rng.uniform(0.5, 2.0, C).astype(dtype)
    b = rng.uniform(-0.5, 1.0, C).astype(dtype)
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)

    def fa_fwd():
        z = fa.conv2d(x, w, None, st, 1, 1, C)
        return (z,) + fa.batch_norm2d(z, rm, rv, g, b, True, activation="relu6", return_saved=True)

    z, y, saved = fa_fwd()
    dy = rng.standard_normal(y.shape).astype(dtype)

    def fa_bwd():
        dz, dg, db = fa.batch_norm2d_backward(dy, z, g, b, saved)
        return fa.conv2d_backward(dz, x, w, st, 1, 1, C)[:2] + (dg, db)

    isz = np.dtype(dtype).itemsize
    floor = ((x.size + y.size) * isz, (dy.size + 2 * x.size) * isz)
    if torch is None:
        return fa_fwd, fa_bwd, None, None, floor[0], floor[1]
    F = torch.nn.functional
    tx, tw, tg, tb = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, w, g, b))
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())

    def t_fwd():
        return F.hardtanh(F.batch_norm(F.conv2d(tx, tw, None, st, 1, 1, C), trm, trv, tg, tb, True), 0.0, 6.0)

    ty, tdy = t_fwd(), torch.from_numpy(dy)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-4)
    return (fa_fwd, fa_bwd, t_fwd, lambda: torch.autograd.grad(ty, (tx, tw, tg, tb), tdy, retain_graph=True),
            floor[0], floor[1])


#: seconds each library's thread pool is left to go idle before the other library's samples: PyTorch's
#: OpenMP (libgomp) threads spin for milliseconds after every parallel region, longer than a sample
#: pair of these layers, and took a core from fastact's TBB workers (2026-12-07, 2 threads: fastact's
#: forward of 32 @16 took 2.53 ms right after PyTorch's calls, 1.12 ms after the pause, PyTorch's
#: 1.3-1.8 ms either way)
SETTLE_S = 0.05


def depthwise_markdown(repeat=9):
    """MobileNetV2's unit, depthwise 3x3 + BatchNorm (training) + ReLU6, batch 64, float32, forward and
    backward: fastact against PyTorch, interleaved (each library's samples after a pause of
    :data:`SETTLE_S`), and both against the memory floor at the copy bandwidth of the same run."""
    import time
    torch = benchmark.load_torch(TORCH_THREADS)
    bw = copy_bandwidth()
    settle = lambda: time.sleep(SETTLE_S)  # noqa: E731
    lines = [f"Copy bandwidth (np.copyto of 64 MiB, read + written, same run): {bw / 1e9:.1f} GB/s. Floor = the "
             "bytes the unit must move (forward: read x, write y; backward: read dy and x, write dx) at that "
             "rate; 'floor / fastact' is the fraction of that speed fastact reaches.", "",
             "| layer | fastact fwd ms | PyTorch fwd ms | vs PyTorch | floor / fastact | "
             "fastact bwd ms | PyTorch bwd ms | vs PyTorch | floor / fastact |",
             "|---|---|---|---|---|---|---|---|---|"]
    for C, H, st in DEPTHWISE_SHAPES:
        ff, fb, tf, tb, bf, bb = depthwise_unit_fns(C, H, st, torch)
        t = interleaved({"pause 1": settle, "fa fwd": ff, "fa bwd": fb, "pause 2": settle, "torch fwd": tf,
                         "torch bwd": tb}, repeat, budget=12.0)
        lines.append(f"| {C} @{H} stride {st} | {_ms(t['fa fwd'])} | {_ms(t['torch fwd'])} | "
                     f"{t['torch fwd'] / t['fa fwd']:.2f}x | {bf / bw / t['fa fwd']:.2f} | "
                     f"{_ms(t['fa bwd'])} | {_ms(t['torch bwd'])} | {t['torch bwd'] / t['fa bwd']:.2f}x | "
                     f"{bb / bw / t['fa bwd']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="float32 only, no backward")
    p.add_argument("--threads", action="store_true",
                   help="only the backward/forward ratios and the pool-fight measurement")
    p.add_argument("--layers", action="store_true",
                   help="only the per-layer training forward/backward table (im2col, Winograd, PyTorch), "
                        "interleaved and each library alone")
    p.add_argument("--layers-peer", action="store_true", help=argparse.SUPPRESS)  # --layers' PyTorch child
    p.add_argument("--depthwise", action="store_true",
                   help="only MobileNetV2's unit (depthwise 3x3 + BatchNorm + ReLU6) at its CIFAR shapes against "
                        "PyTorch and the memory floor")
    p.add_argument("--rule", action="store_true",
                   help="only im2col against Winograd over the layer shapes behind algorithm='auto'")
    p.add_argument("--accuracy", action="store_true",
                   help="only the float32 error of im2col and Winograd on the net layers")
    a = p.parse_args(argv)
    if a.layers_peer:
        import json
        print(json.dumps(layer_times(("torch",), a.repeat)))
        return
    benchmark.load_torch(TORCH_THREADS)
    for k, v in benchmark.machine():
        print(f"{k:20s} {v}")
    print(f"CONV_WORKSPACE_BYTES = {fa.config.CONV_WORKSPACE_BYTES}")
    print(f"conv GEMM: {fa.system.info()['conv GEMM']}")
    print("Peer time / fastact time: above 1.00x fastact is faster.\n")
    if a.depthwise:
        if benchmark.load_torch() is None:
            sys.exit("--depthwise compares with PyTorch, which is not installed")
        print(depthwise_markdown(a.repeat))
        return
    if a.rule:
        print(rule_markdown(a.repeat))
        return
    if a.accuracy:
        print(accuracy_markdown())
        return
    if a.layers:
        if benchmark.load_torch() is None:
            sys.exit("--layers compares with PyTorch, which is not installed")
        print(layers_markdown(a.repeat))
        print()
        print(layers_markdown(a.repeat, alone=True))
        return
    if a.threads:
        print(backward_ratio_markdown(a.repeat))
        print()
        print(pool_fight_markdown())
        return
    dtypes = (np.float32,) if a.quick else DTYPES
    rows, gemm = run(a.repeat, dtypes=dtypes, backward=not a.quick)
    print(markdown(rows, gemm))
    print("\nExtra memory of one fastact.conv2d call beyond x and y (tracemalloc):\n")
    print(memory_markdown(dtypes=dtypes))
    print()
    print(stages_markdown(dtypes=dtypes))
    print()
    print(backward_ratio_markdown(a.repeat))
    print()
    print(pool_fight_markdown())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
