"""GPU benchmark: every fastact.cuda kernel against the device's copy bandwidth, its GEMM rate and the peers.

    python bench/gpu/bench_gpu.py [--size 16777216] [--repeat 20] [--markdown out.md]

On a machine with an NVIDIA GPU (and the ``cuda`` extra) it measures, with CUDA events around each launch
(median of ``--repeat``, after a warm-up launch that compiles):

* the floor: a device-to-device copy of n float32 values (8n bytes moved) -> GB/s;
* each activation's forward (8n bytes) and backward (12n bytes) -> GB/s and share of the copy rate,
  beside PyTorch's CUDA kernel and CuPy's elementwise formulation when those are installed;
* the tiled GEMM (2 M N K FLOPs) and conv2d + bias + ReLU on two small-CNN layer shapes -> GFLOP/s,
  beside ``torch.nn.functional.conv2d`` and ``cupy.matmul`` when installed;
* the fused layer backward (activation backward + bias sum, then the GEMMs) of the same convolutions,
  from the pre-activation the forward returns (``return_preactivation=True``).

Under ``NUMBA_ENABLE_CUDASIM=1`` it runs (tiny sizes, meaningless times) only to check that it works.
"""

import argparse
import os
import statistics
import sys

import numpy as np


def _timer(cuda):
    def time_ms(fn, repeat):
        fn()  # compile / warm up
        cuda.synchronize()
        out = []
        for _ in range(repeat):
            start, stop = cuda.event(), cuda.event()
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            out.append(cuda.event_elapsed_time(start, stop))
        return statistics.median(out)
    return time_ms


def _peers():
    peers = {}
    try:
        import torch
        if torch.cuda.is_available():
            peers["torch"] = torch
    except ImportError:
        pass
    try:
        import cupy
        peers["cupy"] = cupy
    except ImportError:
        pass
    return peers


def run(size, repeat):
    from numba import cuda

    from fastact import cuda as fcuda
    from fastact.table import ENTRIES

    if not fcuda.is_available():
        sys.exit("no CUDA GPU (set NUMBA_ENABLE_CUDASIM=1 for a dry run on the simulator)")
    sim = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    if sim:
        size = min(size, 4096)
        repeat = 1
    time_ms = _timer(cuda) if not sim else (lambda fn, r: _sim_time(fn))
    peers = _peers()
    rng = np.random.default_rng(0)
    x = cuda.to_device(rng.standard_normal(size).astype(np.float32))
    dy = cuda.to_device(rng.standard_normal(size).astype(np.float32))
    y = cuda.device_array_like(x)
    rows = []
    copy_ms = time_ms(lambda: y.copy_to_device(x), repeat)
    copy_gbs = 8 * size / copy_ms / 1e6
    rows.append(("copy (floor)", "8n", f"{copy_gbs:.1f} GB/s", "100%", "-"))
    tx = peers["torch"].as_tensor(x, device="cuda") if "torch" in peers else None
    for name, act in ENTRIES.items():
        for backward in (False, True):
            fn = getattr(fcuda, f"{name}_backward" if backward else name)
            nbytes = (12 if backward else 8) * size
            ms = time_ms((lambda: fn(dy, x)) if backward else (lambda: fn(x)), repeat)
            gbs = nbytes / ms / 1e6
            peer = "-"
            if tx is not None and act.torch_name and not backward:
                F = peers["torch"].nn.functional
                tf = getattr(F, act.torch_name, None) or getattr(peers["torch"], act.torch_name)
                try:
                    tms = time_ms(lambda: tf(tx), repeat)
                    peer = f"torch {tms / ms:.2f}x"
                except TypeError:  # torch has no defaults for its parameters (threshold)
                    pass
            rows.append((f"{name}{'_backward' if backward else ''}", f"{nbytes // size}n",
                         f"{gbs:.1f} GB/s", f"{100 * gbs / copy_gbs:.0f}%", peer))
    # GEMM and conv
    for m, k, n in [(1024, 1024, 1024), (2048, 2048, 2048)] if not sim else [(32, 32, 32)]:
        a = cuda.to_device(rng.standard_normal((m, k)).astype(np.float32))
        b = cuda.to_device(rng.standard_normal((k, n)).astype(np.float32))
        ms = time_ms(lambda: fcuda.matmul(a, b), repeat)
        peer = "-"
        if "torch" in peers:
            ta, tb = peers["torch"].as_tensor(a, device="cuda"), peers["torch"].as_tensor(b, device="cuda")
            tms = time_ms(lambda: ta @ tb, repeat)
            peer = f"torch {tms / ms:.2f}x"
        rows.append((f"GEMM {m}x{k}x{n}", "2MNK", f"{2 * m * n * k / ms / 1e6:.0f} GFLOP/s", "-", peer))
    shapes = [(32, 3, 32, 32, 32), (64, 64, 32, 32, 64)] if not sim else [(2, 3, 8, 8, 4)]
    for N, C, H, W, K in shapes:
        xc = cuda.to_device(rng.standard_normal((N, C, H, W)).astype(np.float32))
        wc = cuda.to_device((0.1 * rng.standard_normal((K, C, 3, 3))).astype(np.float32))
        bc = cuda.to_device(np.zeros(K, np.float32))
        ms = time_ms(lambda: fcuda.conv2d(xc, wc, bc, 1, 1, activation="relu"), repeat)
        flops = 2 * N * K * C * 9 * H * W
        peer = "-"
        if "torch" in peers:
            F = peers["torch"].nn.functional
            txc, twc, tbc = (peers["torch"].as_tensor(v, device="cuda") for v in (xc, wc, bc))
            tms = time_ms(lambda: F.relu(F.conv2d(txc, twc, tbc, padding=1)), repeat)
            peer = f"torch {tms / ms:.2f}x"
        rows.append((f"conv3x3+bias+relu N{N} {C}->{K} @{H}", "2NKCRSPQ",
                     f"{flops / ms / 1e6:.0f} GFLOP/s", "-", peer))
        _, zc = fcuda.conv2d(xc, wc, bc, 1, 1, activation="relu", return_preactivation=True)
        dyc = cuda.to_device(rng.standard_normal(zc.shape).astype(np.float32))
        ms = time_ms(lambda: fcuda.conv2d_backward(dyc, xc, wc, 1, 1, preactivation=zc,
                                                   activation="relu"), repeat)
        rows.append((f"conv3x3+bias+relu backward N{N} {C}->{K} @{H}", "4NKCRSPQ",
                     f"{2 * flops / ms / 1e6:.0f} GFLOP/s", "-", "-"))
    return rows, (cuda.get_current_device().name if not sim else "CUDA simulator")


def _sim_time(fn):
    import time
    t0 = time.perf_counter()
    fn()
    return max((time.perf_counter() - t0) * 1e3, 1e-6)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1 << 24)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--markdown")
    a = ap.parse_args(argv)
    rows, device = run(a.size, a.repeat)
    name = device.decode() if isinstance(device, bytes) else device
    lines = [f"device: {name}, n = {a.size} float32 values (peer ratio: peer time / fastact time)", "",
             "| kernel | bytes or FLOPs | fastact | % of copy | vs peer |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
