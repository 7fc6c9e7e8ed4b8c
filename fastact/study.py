"""``python -m fastact study``: train one network with each of several activations and compare them.

For every activation and seed the same network (``--model``, any of ``train``'s) is built from the same
seed, so every weight is the same whatever the activation (an activation module has no weights;
``prelu`` adds its slopes), then trained on the same data split with the same schedule (``train``'s
defaults for the model and data set, or the options given). The seed changes the initial weights and
the batch order; the split of the data stays the one of seed 0, so seeds vary the training, not the
test set.

It writes, into ``--out`` (default ``runs/study-<model>-<dataset>``):

* ``study.md``: a table per activation: final test accuracy (mean, and the spread over seeds as min-max),
  final training loss, the time of one whole training step (forward, backward, optimizer) on the first
  batch, and of the activation's forward + backward alone on 2**20 float32 values (each the median of
  repeats, the activations timed interleaved after the training, so that the machine's load hits them
  alike), and the share
  of units that were dead or saturated (derivative zero for every training image of the last epoch;
  mean over the activation layers; "-" for activations whose derivative is never zero, and for ResNets,
  whose blocks fuse their ReLUs and record nothing);
* ``study.json``: every run's per-epoch history, the table's numbers and the configuration;
* ``study.png``: test accuracy and training loss per epoch (mean over seeds, the band min-max) and the
  final accuracies.

What it does not show: a ranking that holds beyond this network, data set, schedule and handful of
seeds. The schedule is the one tuned for the model's default activation, so the others may be
handicapped by it; small data sets (the digits) saturate near 100% and separate little.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from . import benchmark, checkpoint, data, nn, train
from . import elementwise as ew
from . import table as _table

__all__ = ["DEFAULT_ACTIVATIONS", "add_arguments", "run_config", "run_study", "activation_times", "step_times",
           "summarise", "markdown", "command", "plot", "main"]

#: the activations the study compares unless ``--activations`` says otherwise
DEFAULT_ACTIVATIONS = ("relu", "leaky_relu", "relu6", "silu", "hardswish", "gelu", "mish")


def add_arguments(p):
    p.add_argument("--model", default="vgg", choices=train.MODELS,
                   help="the network (any of train's; default vgg, the digits' small VGG)")
    p.add_argument("--dataset", choices=sorted(data.DATASETS),
                   help="default: digits (as 3x32x32 images for the 3-channel networks)")
    p.add_argument("--activations", default=",".join(DEFAULT_ACTIVATIONS),
                   help="comma-separated activations of fastact (or prelu), each replacing every "
                        "activation of the network (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per activation, >= 1 (default 3)")
    p.add_argument("--epochs", type=int, help="epochs per run (default: train's for the model)")
    p.add_argument("--batch-size", type=int, help="default: train's for the model")
    p.add_argument("--lr", type=float, help="default: train's for the model")
    p.add_argument("--optimizer", choices=["sgd", "adam"], help="default: train's for the model")
    p.add_argument("--limit", type=int, help="only the first N training images (quick runs)")
    p.add_argument("--data-dir", help="directory of the MNIST or CIFAR-10 files")
    p.add_argument("--out", help="output directory (default runs/study-<model>-<dataset>)")
    p.add_argument("--quiet", action="store_true", help="one line per run only")


def _activations(text):
    names = [a.strip() for a in text.split(",") if a.strip()]
    if not names:
        raise ValueError("--activations needs at least one activation name")
    if len(set(names)) != len(names):
        raise ValueError(f"--activations names one twice: {text!r}")
    for a in names:
        if a != "prelu":
            _table.get(a)  # ValueError naming the valid names
    return names


def run_config(args, activation, seed):
    """``train``'s configuration (:func:`fastact.train.config_from_args`: its checks and defaults) of the
    study's run of ``activation`` with ``seed``, from the study's parsed options."""
    ns = argparse.Namespace(model=args.model, dataset=args.dataset, classes=None, n_chans1=None, n_blocks=None,
                            data_dir=args.data_dir, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            optimizer=args.optimizer, momentum=None, activation=activation, seed=seed,
                            dtype=None, limit=args.limit)
    return train.config_from_args(ns)


def _activation_fn(name, size):
    """A zero-argument callable of the activation's forward plus backward on ``size`` float32 values."""
    x = np.random.default_rng(0).standard_normal(size).astype(np.float32)
    dy = np.ones_like(x)
    if name == "prelu":
        w = np.full(1, 0.25, np.float32)

        def both():
            ew.prelu(x, w)
            ew.prelu_backward(dy, x, w)
    else:
        fwd, bwd = getattr(ew, name), getattr(ew, name + "_backward")

        def both():
            fwd(x)
            bwd(dy, x)
    return both


def activation_times(names, size=1 << 20, repeat=7):
    """{name: median seconds of the activation's forward plus backward on ``size`` float32 values},
    the activations timed interleaved (:func:`fastact.benchmark.median_time`)."""
    return benchmark.median_time({n: _activation_fn(n, size) for n in names}, repeat)


def step_times(args, names, x, y, repeat=5):
    """{name: median seconds of one training step of the study's network with that activation} on the
    first batch of ``x``, the networks timed interleaved (:func:`fastact.benchmark.median_time`), so
    that the load of the machine hits every activation alike."""
    fns = {}
    for name in names:
        cfg = run_config(args, name, 0)
        model, opt = train.build(cfg)
        xb, yb = x[:cfg["batch_size"]].astype(cfg["dtype"], copy=False), y[:cfg["batch_size"]]

        def step(model=model, opt=opt, loss_fn=nn.CrossEntropyLoss(), xb=xb, yb=yb):
            train.train_step(model, opt, loss_fn, xb, yb)
        fns[name] = step
    return benchmark.median_time(fns, repeat)


def run_study(args, say=print):
    """Train every (activation, seed) run of the study; returns the results dict written to study.json."""
    names = _activations(args.activations)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    base = run_config(args, names[0], 0)
    xtr, ytr, xte, yte = train.load_data(base, argparse.Namespace(data_dir=args.data_dir, limit=args.limit))
    runs = []
    for name in names:
        for seed in range(args.seeds):
            cfg = run_config(args, name, seed)
            model, opt = train.build(cfg)
            loss_fn = nn.CrossEntropyLoss()
            history = []
            for epoch in range(1, cfg["epochs"] + 1):
                t0 = time.perf_counter()
                loss, acc, _, dead = train.train_epoch(model, opt, loss_fn, xtr, ytr, cfg, epoch)
                seconds = time.perf_counter() - t0
                if any(isinstance(m, nn.BatchNorm2d) and m.momentum is not None and m.momentum < 0.1
                       for m in model.modules()):
                    train.recompute_batchnorm_stats(
                        model, xtr[:train.BN_RECOMPUTE_IMAGES].astype(cfg["dtype"], copy=False), cfg["batch_size"])
                history.append(dict(epoch=epoch, loss=loss, train_acc=acc,
                                    test_acc=train.evaluate(model, xte, yte), seconds=seconds, dead=dead))
                if not args.quiet:
                    say(f"  {name} seed {seed} epoch {epoch}: loss {loss:.4f}, test acc "
                        f"{history[-1]['test_acc']:.2%}", flush=True)
            runs.append(dict(activation=name, seed=seed, history=history))
            say(f"fastact study: {name} seed {seed}: test accuracy {history[-1]['test_acc']:.2%}", flush=True)
    config = {k: base[k] for k in ("model", "dataset", "epochs", "batch_size", "lr", "optimizer", "dtype")}
    say("fastact study: timing one training step per activation, interleaved", flush=True)
    return dict(config=dict(config, activations=names, seeds=args.seeds, train_images=len(ytr),
                            test_images=len(yte), limit=args.limit),
                runs=runs, step_seconds=step_times(args, names, xtr, ytr),
                activation_seconds=activation_times(names))


def summarise(results):
    """One row per activation: mean/min/max final test accuracy, mean final loss, median step time,
    the activation's forward+backward time, the mean dead or saturated share (None where not recorded)."""
    rows = []
    for name in results["config"]["activations"]:
        runs = [r for r in results["runs"] if r["activation"] == name]
        acc = np.array([r["history"][-1]["test_acc"] for r in runs])
        dead = [np.mean(list(r["history"][-1]["dead"].values())) for r in runs if r["history"][-1]["dead"]]
        rows.append(dict(activation=name, acc_mean=float(acc.mean()), acc_min=float(acc.min()),
                         acc_max=float(acc.max()), loss=float(np.mean([r["history"][-1]["loss"] for r in runs])),
                         step_ms=1e3 * results["step_seconds"][name],
                         act_us=1e6 * results["activation_seconds"][name],
                         dead=float(np.mean(dead)) if dead else None))
    return rows


def markdown(results):
    """The study's table (and a line saying what was run) as Markdown."""
    c = results["config"]
    lines = [f"{c['model']} on {c['dataset']} ({c['train_images']} training, {c['test_images']} test images), "
             f"{c['epochs']} epochs, {c['optimizer']} lr {c['lr']}, batch {c['batch_size']}, {c['seeds']} seeds "
             f"per activation, {c['dtype']}.", "",
             "| activation | test accuracy, mean (min-max) | final loss | step (ms) | activation fwd+bwd, "
             "2^20 values (us) | dead or saturated units |",
             "|---|---|---|---|---|---|"]
    for r in summarise(results):
        dead = "-" if r["dead"] is None else f"{r['dead']:.1%}"
        lines.append(f"| {r['activation']} | {r['acc_mean']:.2%} ({r['acc_min']:.2%}-{r['acc_max']:.2%}) | "
                     f"{r['loss']:.4f} | {r['step_ms']:.1f} | {r['act_us']:.0f} | {dead} |")
    return "\n".join(lines) + "\n"


def command(results):
    """The ``python -m fastact study`` command line that reproduces ``results``."""
    c = results["config"]
    line = (f"python -m fastact study --model {c['model']} --dataset {c['dataset']} --activations "
            f"{','.join(c['activations'])} --seeds {c['seeds']} --epochs {c['epochs']} --batch-size "
            f"{c['batch_size']} --lr {c['lr']} --optimizer {c['optimizer']}")
    return line + (f" --limit {c['train_images']}" if c.get("limit") else "")


def plot(results, path):
    """study.png: test accuracy and training loss per epoch per activation (mean over seeds, band
    min-max), and the final accuracies with their spread; the command that ran the study is in the
    PNG's ``Source`` metadata."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    rows = summarise(results)
    for i, name in enumerate(results["config"]["activations"]):
        runs = [r for r in results["runs"] if r["activation"] == name]
        epochs = [h["epoch"] for h in runs[0]["history"]]
        for ax, key in ((axes[0], "test_acc"), (axes[1], "loss")):
            v = np.array([[h[key] for h in r["history"]] for r in runs])
            ax.plot(epochs, v.mean(axis=0), label=name, color=f"C{i}")
            ax.fill_between(epochs, v.min(axis=0), v.max(axis=0), color=f"C{i}", alpha=0.15)
        r = rows[i]
        spread = [[max(0.0, r["acc_mean"] - r["acc_min"])], [max(0.0, r["acc_max"] - r["acc_mean"])]]
        axes[2].errorbar([i], [r["acc_mean"]], yerr=spread, fmt="o", color=f"C{i}", capsize=4)
    axes[0].set(xlabel="epoch", ylabel="test accuracy", title="test accuracy (mean, min-max over seeds)")
    axes[1].set(xlabel="epoch", ylabel="training loss", yscale="log", title="training loss")
    from matplotlib.ticker import MaxNLocator
    for ax in axes[:2]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set(xticks=range(len(rows)), xlim=(-0.5, len(rows) - 0.5), title="final test accuracy")
    axes[2].set_xticklabels([r["activation"] for r in rows], rotation=30)
    axes[0].legend(fontsize=8)
    c = results["config"]
    fig.suptitle(f"fastact study: {c['model']} on {c['dataset']}, {c['seeds']} seeds per activation")
    fig.tight_layout()
    checkpoint.atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=90,
                                                         metadata={"Source": command(results)}))
    plt.close(fig)


def _atomic(path, text):
    checkpoint.atomic_write(path, lambda fh: fh.write(text.encode()))


def main(args):
    """``python -m fastact study``: run, print the table, write study.md, study.json and study.png."""
    try:
        results = run_study(args)
    except (data.DataError, ValueError) as exc:
        print(f"fastact study: error: {exc}", file=sys.stderr)
        return 2
    c = results["config"]
    out = args.out or os.path.join("runs", f"study-{c['model']}-{c['dataset']}")
    os.makedirs(out, exist_ok=True)
    table = markdown(results)
    _atomic(os.path.join(out, "study.md"), table)
    _atomic(os.path.join(out, "study.json"), json.dumps(results, indent=1, sort_keys=True))
    plot(results, os.path.join(out, "study.png"))
    print(table)
    print(f"fastact study: the same study again: {command(results)}")
    print(f"fastact study: wrote {out}/study.md, study.json and study.png")
    return 0
