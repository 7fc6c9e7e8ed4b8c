"""Command line: ``python -m fastact {train,warmup,study,info,bench,plot}`` (also installed as the ``fastact``
script)."""

import argparse
import sys


def _info(args):
    from fastact import system
    for k, v in system.info().items():
        print(f"{k:20s} {v}")
    return 0


def _bench(args):
    from fastact import benchmark
    return benchmark.main(args)


def _plot(args):
    from fastact import plots
    results, note = None, None
    try:
        results = plots.find_results(args.results)
    except FileNotFoundError as exc:
        if args.results is not None:  # asked for and not there: nothing to draw them from
            print(f"fastact plot: error: {exc}", file=sys.stderr)
            return 2
        note = f"speedup.png and conv_gflops.png need benchmark results, and {exc}"
    for path in plots.all_figures(args.out, quick=args.quick, results=results,
                                  with_results=results is not None):
        print(path)
    if note:
        print(f"fastact plot: {note}", file=sys.stderr)
    return 0


def _train(args):
    from fastact import train
    return train.run(args)


def _study(args):
    from fastact import study
    return study.main(args)


def _warmup(args):
    from fastact import train
    return train.run_warmup(args)


def build_parser():
    """The ``python -m fastact`` argument parser (its subcommands and every option)."""
    parser = argparse.ArgumentParser(
        prog="fastact", description="fastact's command line: train a CNN with no framework (train), compile "
        "a training run's kernels ahead of time (warmup), compare activations on one network (study), describe this installation (info), time fastact "
        "against NumPy and PyTorch (bench), draw the documentation's figures (plot).")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a CNN: VGG-style (default, on the bundled digits set) or a "
                                     "reference ResNet of fastact.models on CIFAR-10; data-parallel "
                                     "over MPI with --distributed under mpiexec -n N")
    from fastact.train import add_arguments
    add_arguments(t)
    t.set_defaults(fn=_train)
    w = sub.add_parser("warmup", help="compile (into the kernel cache) every kernel that `train` with the "
                                      "same options will need, and say how long it took: for a Docker "
                                      "build step or a cluster's login node")
    add_arguments(w)
    w.set_defaults(fn=_warmup)
    st = sub.add_parser("study", help="the activation study: train one network with each of several "
                                      "activations (same data, initial weights and schedule) and write a "
                                      "table and a figure")
    from fastact.study import add_arguments as add_study_arguments
    add_study_arguments(st)
    st.set_defaults(fn=_study)
    sub.add_parser("info", help="versions, threading layer, threads, JIT cache, CUDA").set_defaults(fn=_info)
    b = sub.add_parser("bench", help="speed ratios against NumPy (and PyTorch when installed)")
    from fastact.benchmark import add_arguments as add_bench_arguments
    add_bench_arguments(b)
    b.set_defaults(fn=_bench)
    p = sub.add_parser("plot", help="regenerate every figure of the documentation")
    p.add_argument("--out", default="fastact-figures",
                   help="directory to write the figures to (default ./fastact-figures; a source checkout "
                        "regenerates its own with --out docs/images --results bench/results)")
    p.add_argument("--quick", action="store_true", help="short training for the demo (a smoke test)")
    p.add_argument("--results", metavar="DIR",
                   help="benchmark results for speedup.png and conv_gflops.png: a directory holding "
                        "activations.md and conv.txt, or one whose newest subdirectory does (default: "
                        "bench/results under the current directory; without any, those two figures are "
                        "left out)")
    p.set_defaults(fn=_plot)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
