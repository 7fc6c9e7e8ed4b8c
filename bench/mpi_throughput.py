"""Data-parallel training throughput over MPI: images/s of one SGD step and its split into compute,
wait and allreduce, for the digits VGG (global batch 32) and net_res_deep(32, 10) (global batch 64).

    python bench/mpi_throughput.py                                   # one process
    NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 mpiexec -n 2 python bench/mpi_throughput.py

Each rank runs the step of ``docs/examples/ddp_digits.py`` on its slice of a fixed global batch:
forward, loss, backward ("compute"), a barrier ("wait": the time this rank waits for the slowest), the
one in-place ``Allreduce`` of all gradients ("allreduce"), the optimizer step. Medians over ``--steps``
steps after ``--warmup``; rank 0 prints. Without mpi4py (or without mpiexec) it runs as one process.
"""

import argparse
import statistics
import time

import numpy as np

from fastact import distributed, models, nn, optim

NETS = {
    "digits VGG": dict(batch=32, make=lambda: models.vgg([16, 16, "M", 32, "M"], in_channels=1, num_classes=10,
                                                         input_size=8, hidden=(128,), seed=0), shape=(1, 8, 8)),
    "net_res_deep(32, 10)": dict(batch=64, make=lambda: models.net_res_deep(32, 10, num_classes=2),
                                 shape=(3, 32, 32), classes=2),
}


def run(name, spec, steps, warmup, comm):
    net = spec["make"]()
    distributed.broadcast_parameters(net)
    opt = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((spec["batch"], *spec["shape"])).astype(np.float32)
    yb = rng.integers(0, spec.get("classes", 10), spec["batch"])
    xs, ys = distributed.shard(xb, yb)
    split = {"step": [], "compute": [], "wait": [], "allreduce": []}
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss_fn(net(xs), ys)
        opt.zero_grad()
        net.backward(loss_fn.backward(), need_input_grad=False)
        t1 = time.perf_counter()
        if comm is not None:
            comm.Barrier()
        t2 = time.perf_counter()
        distributed.allreduce_gradients(net)
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if i >= warmup:
            for k, v in (("step", t4 - t0), ("compute", t1 - t0), ("wait", t2 - t1), ("allreduce", t3 - t2)):
                split[k].append(v)
    med = {k: statistics.median(v) for k, v in split.items()}
    if distributed.rank() == 0:
        print(f"| {name} | {distributed.size()} | {spec['batch'] / med['step']:,.0f} | {1e3 * med['step']:.2f} | "
              f"{1e3 * med['compute']:.2f} | {1e3 * med['wait']:.2f} | {1e3 * med['allreduce']:.2f} |", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    a = ap.parse_args(argv)
    comm = None
    try:
        comm = distributed.init()
    except ImportError:
        pass
    if distributed.rank() == 0:
        import numba
        print(f"{distributed.size()} rank(s), {numba.get_num_threads()} Numba thread(s) each, float32, "
              f"median of {a.steps} steps")
        print("| net | ranks | images/s | step ms | compute ms | wait ms | allreduce ms |")
        print("|---|---|---|---|---|---|---|")
    for name, spec in NETS.items():
        run(name, spec, a.steps, a.warmup, comm)


if __name__ == "__main__":
    main()
