"""One SGD training step of the reference nets, fastact against PyTorch, side by side.

    PYTHONPATH=. python bench/step_report.py [--repeat 15] [--profile] [--only net_res_deep]

The VGG-style nets (batch 64, float32, 10 classes; per width two conv3x3 + ReLU and a 2x2 max-pool,
then Linear + ReLU to 128 and Linear to 10):

* ``digits 1x8x8``: widths (16, 32)
* ``mnist 1x28x28``: widths (16, 32, 64)
* ``cifar 3x32x32``: widths (16, 32, 64)

and the ResNet ``net_res_deep 3x32x32``: :func:`fastact.models.net_res_deep` (32 channels, 10 residual
blocks of conv3x3 + BatchNorm + ReLU + skip at 16x16, 2 classes), against the same nets in PyTorch
with the same state dict (``fastact.models.to_torch``). The nets and the step are
``fastact.benchmark.STEP_NETS`` and ``step_fns``, which ``python -m fastact bench --suite step`` times
too; this script adds the per-layer profile and PyTorch alone in its own process.

A step is forward, cross-entropy, zero_grad, backward, ``SGD(lr=0.01, momentum=0.9).step()``, the same
work in both libraries (PyTorch with 2 threads, the machine's cores). docs/performance.md ("Training step") shows
a run of it. fastact and PyTorch samples are
interleaved, each the second of two back-to-back steps, and each figure is a median
(:func:`fastact.benchmark.median_time`), because the machine is noisy. ``--profile`` adds a per-layer
table for fastact: forward and backward time of each fused block (conv + bias + ReLU is one block; for
net_res_deep each ResBlock, whose BatchNorm + ReLU + add is one fused pass, and the pools, flatten and
loss together as "the rest"), which is where the time goes when fastact is slower. ``bench/test_train_step.py`` times the same steps
under pytest-benchmark.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import fastact
from fastact import benchmark, nn
NETS = benchmark.STEP_NETS
BATCH = benchmark.STEP_BATCH
batch = benchmark.step_batch
fastact_model = benchmark.step_model


def fastact_step(spec, lib=fastact):
    """A zero-argument callable running one training step of ``lib`` (see fastact_model) on a fixed
    batch."""
    return benchmark.step_fns(spec, lib=lib)["fastact"]


def torch_step(spec):
    """The same step in PyTorch (the net from ``fastact.models.to_torch``), or None without PyTorch."""
    torch = benchmark.load_torch(num_threads=2)
    return None if torch is None else benchmark.step_fns(spec, torch)["torch"]


def profile_module(model, x, y, repeat, blocks):
    """[(block, forward ms, backward ms)] of a net written as an nn.Module: the median time in each
    (name, module) of ``blocks`` (their forward and backward are wrapped with timers for the run),
    and "the rest" (what the net does between them: pools, flatten, the loss), median of ``repeat``."""
    times = {name: ([], []) for name, _ in blocks}
    for name, m in blocks:
        fwd, bwd = m.forward, m.backward

        def timed(fn, out):
            def call(*a, **k):
                t0 = time.perf_counter()
                r = fn(*a, **k)
                out.append(time.perf_counter() - t0)
                return r
            return call
        m.forward, m.backward = timed(fwd, times[name][0]), timed(bwd, times[name][1])
    loss_fn = nn.CrossEntropyLoss()
    total_f, total_b = [], []
    for _ in range(repeat + 2):
        t0 = time.perf_counter()
        loss_fn(model(x), y)
        t1 = time.perf_counter()
        model.backward(loss_fn.backward(), need_input_grad=False)
        t2 = time.perf_counter()
        total_f.append(t1 - t0)
        total_b.append(t2 - t1)
    for _, m in blocks:
        del m.forward, m.backward
    med = lambda v: 1e3 * statistics.median(v[2:])
    rows = [(name, med(f), med(b)) for name, (f, b) in times.items()]
    rows.append(("the rest (pools, flatten, loss)", med(total_f) - sum(r[1] for r in rows),
                 med(total_b) - sum(r[2] for r in rows)))
    return rows


def profile(spec, repeat):
    """[(block, forward ms, backward ms)] for fastact's fused blocks, median of ``repeat``."""
    model = fastact_model(spec)
    if spec.get("model") == "net_res_deep":
        x, y = batch(spec)
        n = spec["n_chans1"]
        blocks = [(f"conv1 + ReLU 3->{n}", model.conv1)]
        blocks += [(f"resblocks.{i} (conv {n}->{n}, BN + ReLU + add)", b) for i, b in enumerate(model.resblocks)]
        blocks += [(f"fc1 + ReLU {model.fc1.in_features}->32", model.fc1), ("fc2 32->2", model.fc2)]
        return profile_module(model, x, y, repeat, blocks)
    mods = list(model)
    x, y = batch(spec)
    rows = []
    for i, j in model.fusion_plan():
        rows.append(([i] if j is None else [i, j], [], []))
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(repeat + 2):
        h = x
        for idx, fw, _bw in rows:
            t0 = time.perf_counter()
            if len(idx) == 1:
                h = mods[idx[0]](h)
            else:
                act = mods[idx[1]]
                h = mods[idx[0]].forward(h, activation=act.name, activation_params=act.params)
            fw.append(time.perf_counter() - t0)
        loss_fn(h, y)
        dy = loss_fn.backward()
        for k, (idx, _fw, bw) in enumerate(reversed(rows)):
            first = k == len(rows) - 1
            t0 = time.perf_counter()
            if len(idx) == 1:
                dy = mods[idx[0]].backward(dy)
            else:
                dy = mods[idx[0]].backward(dy, need_input_grad=not first)
            bw.append(time.perf_counter() - t0)
    out = []
    for idx, fw, bw in rows:
        name = " + ".join(type(mods[i]).__name__ for i in idx)
        shape = ""
        m = mods[idx[0]]
        if isinstance(m, nn.Conv2d):
            shape = f" {m.in_channels}->{m.out_channels}"
        elif isinstance(m, nn.Linear):
            shape = f" {m.in_features}->{m.out_features}"
        out.append((f"{idx[0]}: {name}{shape}", 1e3 * statistics.median(fw[2:]),
                    1e3 * statistics.median(bw[2:])))
    return out


def torch_subprocess_ms(name, repeat):
    """PyTorch's median step time (ms) for the net ``name``, measured in a fresh Python process of its own:
    in the same process as fastact, PyTorch's OpenMP pool and fastact's TBB pool share the 2 cores and
    PyTorch has been seen to slow to ~40 ms per op on this loaded machine. None without PyTorch."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-only", name, "--repeat",
                        str(repeat)], capture_output=True, text=True, env=env)
    try:
        return float(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--profile", action="store_true", help="per-layer table of fastact's step")
    ap.add_argument("--only", help="nets whose name starts with this (e.g. net_res_deep)")
    ap.add_argument("--torch-subprocess", action="store_true",
                    help="also time PyTorch alone in a process of its own (an extra column)")
    ap.add_argument("--torch-only", metavar="NET", help=argparse.SUPPRESS)  # the subprocess's side
    a = ap.parse_args(argv)
    if a.torch_only:
        t = torch_step(NETS[a.torch_only])
        print("" if t is None else f"{1e3 * benchmark.median_time({'torch': t}, a.repeat)['torch']:.3f}")
        return 0
    nets = {k: v for k, v in NETS.items() if not a.only or k.startswith(a.only)}
    benchmark.load_torch(num_threads=2)
    for k, v in benchmark.machine():
        print(f"{k:20s} {v}")
    print(f"fastact {fastact.__version__}, batch {BATCH}, float32, one SGD step (median of {a.repeat})")
    sub = a.torch_subprocess
    print("| net | fastact ms | PyTorch ms | ratio (PyTorch / fastact) | fastact images/s |"
          + (" PyTorch ms, own process | ratio |" if sub else ""))
    print("|---|---|---|---|---|" + ("---|---|" if sub else ""))
    for name, spec in nets.items():
        fns = {"fastact": fastact_step(spec)}
        t = torch_step(spec)
        if t is not None:
            fns["torch"] = t
        m = benchmark.median_time(fns, a.repeat)
        tf, tt = m["fastact"], m.get("torch")
        ratio = f"{tt / tf:.2f}x" if tt else "-"
        extra = ""
        if sub:
            ts = torch_subprocess_ms(name, a.repeat)
            extra = " - | - |" if ts is None else f" {ts:.2f} | {ts / (1e3 * tf):.2f}x |"
        print(f"| {name} | {1e3 * tf:.2f} | {'-' if tt is None else f'{1e3 * tt:.2f}'} | {ratio} | "
              f"{BATCH / tf:,.0f} |{extra}", flush=True)
    if a.profile:
        for name, spec in nets.items():
            print(f"\nper-layer profile, {name} (fastact, ms, median of {a.repeat})")
            print("| block | forward | backward |")
            print("|---|---|---|")
            rows = profile(spec, a.repeat)
            for block, f, b in rows:
                print(f"| {block} | {f:.2f} | {b:.2f} |")
            print(f"| total | {sum(r[1] for r in rows):.2f} | {sum(r[2] for r in rows):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
