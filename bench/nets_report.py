"""torchvision's ResNet-18, MobileNetV2 and MobileNetV3-Small in fastact against PyTorch: inference at
224x224 (eval, batch 1 and 8) and one SGD step at 32x32 (train, batch 64).

    PYTHONPATH=. python bench/nets_report.py [--nets resnet18,mobilenet_v2,mobilenet_v3_small] [--repeat 5]

Both libraries hold the same weights: fastact's networks (seed 0, float32) loaded into torchvision's own
model definitions (:func:`fastact.benchmark.load_torchvision_models`), PyTorch on 2 threads, inference
under ``torch.no_grad()``. A step is forward, cross-entropy, backward and ``SGD(lr=0.01, momentum=0.9)``
(neither library computes the images' gradient). Every case is timed twice: interleaved in this process
(:func:`fastact.benchmark.median_time`: fastact, PyTorch, fastact, ..., each sample the second of two
back-to-back calls) and each library alone in a fresh process of its own (this script with ``--only``).
The ratio is PyTorch's time over fastact's: above 1 fastact is faster.

The floor is the work of the convolutions and linear layers (2 FLOPs per multiply-add; the step counts
three times the forward's) at the SGEMM rate of a 1536x1536 float32 matmul measured in the same run:
no implementation built on GEMMs beats it. Depthwise convolutions, BatchNorm and the activations are
memory-bound and add their own time above it.
"""

import argparse
import json
import subprocess
import sys

import numpy as np

import fastact
from fastact import benchmark, models, nn, optim
from fastact.conv import conv_geometry

NETS = ("resnet18", "mobilenet_v2", "mobilenet_v3_small")


def cases(nets, size, batches, step_size, step_batch):
    """[(label, net, kind, batch, image size)] of the report."""
    out = []
    for name in nets:
        out += [(f"{name} inference {size}x{size}, batch {b}", name, "eval", b, size) for b in batches]
        out.append((f"{name} SGD step {step_size}x{step_size}, batch {step_batch}", name, "step", step_batch,
                    step_size))
    return out


def forward_flops(name, size):
    """FLOPs of the convolutions and linear layers of ``name`` on one size x size image, read from the
    inputs its Conv2d and Linear modules keep in training mode."""
    net = getattr(models, name)(num_classes=1000)
    net(np.zeros((2, 3, size, size), np.float32))  # batch 2: BatchNorm needs 2 values per channel
    flops = 0
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and m._saved is not None:
            x = m._saved[0]
            (_, k, p, q), *_ = conv_geometry(x.shape, m.weight.data.shape, m.stride, m.padding, m.dilation, m.groups)
            flops += 2 * k * m.weight.data[0].size * p * q
        elif isinstance(m, nn.Linear):
            flops += 2 * m.weight.data.size
    return flops / 2  # per image: the forward ran on 2 images


def sgemm_gflops(repeat=5):
    a = np.random.default_rng(0).standard_normal((1536, 1536)).astype(np.float32)
    t = benchmark.median_time({"sgemm": lambda: a @ a}, repeat)["sgemm"]
    return 2 * 1536 ** 3 / t / 1e9


def callables(case, libs, torch=None, tv=None):
    """{lib: zero-argument callable} of one case, for "fastact" and (with torch and tv) "torch"."""
    label, name, kind, batch, size = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    y = rng.integers(0, 1000, batch)
    net = getattr(models, name)(num_classes=1000)
    out = {}
    if "torch" in libs:
        tnet = getattr(tv, name)(num_classes=1000)
        tnet.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        if kind == "eval":
            tnet.eval()

            def torch_fn():
                with torch.no_grad():
                    return tnet(tx)
        else:
            tnet.train()
            topt = torch.optim.SGD(tnet.parameters(), lr=0.01, momentum=0.9)

            def torch_fn():
                loss = torch.nn.functional.cross_entropy(tnet(tx), ty)
                topt.zero_grad()
                loss.backward()
                topt.step()
        out["torch"] = torch_fn
    if "fastact" in libs:
        if kind == "eval":
            net.eval()

            def fastact_fn():
                return net(x)
        else:
            opt = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            loss_fn = nn.CrossEntropyLoss()

            def fastact_fn():
                loss_fn(net(x), y)
                opt.zero_grad()
                net.backward(loss_fn.backward(), need_input_grad=False)
                opt.step()
        out["fastact"] = fastact_fn
    return out


def measure(case_list, libs, repeat):
    """{label: {lib: median seconds}}, the libraries interleaved per case."""
    torch = benchmark.load_torch(num_threads=2) if "torch" in libs else None
    tv = benchmark.load_torchvision_models() if torch is not None else None
    if "torch" in libs and tv is None:
        libs = [lib for lib in libs if lib != "torch"]
    result = {}
    for case in case_list:
        fns = callables(case, libs, torch, tv)
        result[case[0]] = benchmark.median_time(fns, repeat)
        print(f"  {case[0]}: " + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in result[case[0]].items()),
              file=sys.stderr, flush=True)
    return result


def alone(lib, argv, repeat):
    """This script's measurement of ``lib`` alone, in a fresh process."""
    cmd = [sys.executable, __file__, *argv, "--only", lib, "--repeat", str(repeat)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"the {lib} process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--size", type=int, default=224, help="inference image size (default 224)")
    ap.add_argument("--batches", default="1,8", help="inference batch sizes (default 1,8)")
    ap.add_argument("--step-size", type=int, default=32)
    ap.add_argument("--step-batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", choices=["fastact", "torch"], help="measure one library and print JSON")
    ap.add_argument("--no-separate", action="store_true", help="skip the processes of each library alone")
    a = ap.parse_args(argv)
    nets = [n for n in a.nets.split(",") if n]
    for n in nets:
        if n not in models.TORCHVISION_NETS:
            ap.error(f"--nets: unknown network {n!r} (one of {sorted(models.TORCHVISION_NETS)})")
    case_list = cases(nets, a.size, [int(b) for b in a.batches.split(",")], a.step_size, a.step_batch)
    if a.only:
        print(json.dumps({k: v.get(a.only) for k, v in measure(case_list, [a.only], a.repeat).items()}))
        return 0
    for k, v in benchmark.machine():
        print(f"{k:20s} {v}")
    gflops = sgemm_gflops()
    print(f"SGEMM rate (1536^3 float32 matmul): {gflops:.1f} GFLOP/s")
    together = measure(case_list, ["fastact", "torch"], a.repeat)
    fwd = {(n, s): forward_flops(n, s) for n, s in {(c[1], c[4]) for c in case_list}}
    own_argv = [f"--nets={a.nets}", f"--size={a.size}", f"--batches={a.batches}", f"--step-size={a.step_size}",
                f"--step-batch={a.step_batch}"]
    have_torch = any("torch" in v for v in together.values())
    separate = {} if a.no_separate else {lib: alone(lib, own_argv, a.repeat)
                                         for lib in (["fastact", "torch"] if have_torch else ["fastact"])}
    print(f"\nfastact {fastact.__version__}, float32, median of {a.repeat}; ratio = PyTorch time / fastact time\n")
    print("| case | GFLOP | floor ms | fastact ms (alone) | PyTorch ms (alone) | ratio (alone) | fastact ms "
          "(interleaved) | PyTorch ms (interleaved) | ratio (interleaved) |")
    print("|---|---|---|---|---|---|---|---|---|")

    def ms(v):
        return "-" if v is None else f"{1e3 * v:.1f}"

    def ratio(t, f):
        return "-" if t is None or f is None else f"{t / f:.2f}x"

    for label, name, kind, batch, size in case_list:
        flop = fwd[(name, size)] * batch * (3 if kind == "step" else 1)
        both = together[label]
        fa_alone = separate.get("fastact", {}).get(label)
        t_alone = separate.get("torch", {}).get(label)
        print(f"| {label} | {flop / 1e9:.2f} | {flop / gflops / 1e6:.1f} | {ms(fa_alone)} | {ms(t_alone)} | "
              f"{ratio(t_alone, fa_alone)} | {ms(both['fastact'])} | {ms(both.get('torch'))} | "
              f"{ratio(both.get('torch'), both['fastact'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
