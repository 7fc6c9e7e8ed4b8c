"""``python -m fastact train``: train a network with fastact alone.

``--model vgg`` (the default) is a small VGG-style ``nn.Sequential`` shaped per data set (``PRESETS``);
``--model resnet18|resnet34|mobilenet_v2|mobilenet_v3_small|mobilenet_v3_large`` are torchvision's
networks (:mod:`fastact.models`), on the digits shown as 3x32x32 images by default (or CIFAR-10), with
their own activations or, with ``--activation``, another one in place of every one of them.
``--model net_depth|net_res|net_res_deep`` are the reference networks of :mod:`fastact.models` for
3x32x32 images: ``--dataset cifar10`` (the default for them), or ``--dataset digits``, scikit-learn's
digits shown as 3x32x32 images (no download). They are the PyTorch classes, built with one output per
class: on CIFAR-10 by default the two classes they were written for (``--classes airplane,bird``), or
any two or more CIFAR-10 classes, all ten included; on the digits all ten. Their training defaults are in
``MODEL_PRESETS``.

Per epoch it shows a progress bar (loss, accuracy, images/s), then the test accuracy and, for the VGG
model, the dead-unit report: for every activation layer whose derivative can be zero (ReLU, ReLU6,
hardtanh, threshold, hardsigmoid, hardswish; ``nn.can_die``), the fraction of its units (channel x
position) whose derivative was zero for every training image during the epoch, so that they learned
nothing -- the "dying ReLU" users of the ReLU family watch for. GELU, SiLU, Leaky ReLU, PReLU and the
other smooth or leaky activations always pass some gradient: no report for them. At the end it prints the final test accuracy and writes the training curves as a PNG.
Checkpoints hold the whole ``state_dict()`` (BatchNorm running statistics and ``num_batches_tracked``
included), so ``--resume`` continues any model exactly.

``mpiexec -n N python -m fastact train --distributed ...`` trains the same model data-parallel on N
processes (:mod:`fastact.distributed`): each step's global batch (``--batch-size``, the same samples
in the same order as one process) is split into N contiguous slices, the gradients are averaged with
one allreduce, and every rank takes the same optimizer step, so the weights are those of the
one-process run up to float rounding (exactly that run's, to rounding, with ``--sync-batchnorm``,
which gives BatchNorm the global batch's statistics). Rank 0 alone prints, writes the checkpoint and
the plot; a checkpoint holds the global state, so ``--resume`` works with any N. An exception on any
rank aborts the whole job, and a collective that outlives ``--mpi-timeout`` seconds does too.
"""

import argparse
import json
import math
import os
import sys
import time
import traceback

import numpy as np

from . import checkpoint, data, models, nn, optim

#: per data set: network shape and training defaults (the digits ones reach ~98% in well under a minute)
PRESETS = {
    "digits": dict(cfg=[16, 16, "M", 32, "M"], hidden=[128], in_channels=1, input_size=8, epochs=12,
                   batch_size=32, lr=2e-3, optimizer="adam"),
    "mnist": dict(cfg=[16, 16, "M", 32, 32, "M", 64, 64, "M"], hidden=[128], in_channels=1,
                  input_size=28, epochs=3, batch_size=64, lr=1e-3, optimizer="adam"),
    "cifar10": dict(cfg=[16, 16, "M", 32, 32, "M", 64, 64, "M"], hidden=[128], in_channels=3,
                    input_size=32, epochs=10, batch_size=64, lr=1e-3, optimizer="adam"),
}

#: the reference networks of fastact.models: builder, the data set they take, training defaults
#: (SGD with the default momentum 0.9; the book trains them with plain SGD at lr 1e-2 and 3e-3)
MODEL_PRESETS = {
    "net_depth": dict(build=models.net_depth, dataset="cifar10", classes="airplane,bird", epochs=10,
                      batch_size=64, lr=1e-2, optimizer="sgd"),
    "net_res": dict(build=models.net_res, dataset="cifar10", classes="airplane,bird", epochs=10,
                    batch_size=64, lr=1e-2, optimizer="sgd"),
    "net_res_deep": dict(build=models.net_res_deep, dataset="cifar10", classes="airplane,bird",
                         epochs=10, batch_size=64, lr=3e-3, optimizer="sgd"),
}
#: torchvision's networks (fastact.models.TORCHVISION_NETS) on the 3x32x32 digits by default: SGD with
#: momentum 0.9 and lr 0.05 reaches ~97% (ResNet-18) in 5 epochs there
TORCHVISION_PRESETS = {name: dict(build=models.TORCHVISION_NETS[name], dataset="digits", classes=None, epochs=5,
                                  batch_size=64, lr=0.05, optimizer="sgd")
                       for name in ("resnet18", "resnet34", "mobilenet_v2", "mobilenet_v3_small",
                                    "mobilenet_v3_large")}
MODEL_PRESETS.update(TORCHVISION_PRESETS)
MODELS = ("vgg",) + tuple(MODEL_PRESETS)

#: the fields of a run that a resumed run shares with its checkpoint (``--resume`` takes them from it;
#: an option that would change one is refused)
_RESUME_KEYS = ("dataset", "model", "cfg", "hidden", "in_channels", "input_size", "activation", "classes",
                "n_chans1", "n_blocks", "optimizer", "batch_size", "seed", "dtype", "num_classes")
#: what ``--resume`` lets an option change: train for more epochs, go on at another learning rate or
#: momentum
_RESUME_OVERRIDES = ("epochs", "lr", "momentum")
#: the options' defaults where they do not depend on the data set and model (the parser's defaults are
#: None, so that ``--resume`` can tell an option given from one left out)
OPTION_DEFAULTS = dict(model="vgg", n_chans1=32, n_blocks=10, momentum=0.9, activation="relu", seed=0,
                       dtype="float32")
#: their values in checkpoints written before the field existed (every such run was a VGG on all classes)
_LEGACY = {"model": "vgg", "classes": None, "n_chans1": None, "n_blocks": None}


def _defaults(key):
    """``train --help``'s text for a default that depends on the data set and model."""
    per_set = ", ".join(f"{d} {PRESETS[d][key]}" for d in PRESETS)
    per_model = ", ".join(f"{m} {MODEL_PRESETS[m][key]}" for m in MODEL_PRESETS)
    return f"per data set for vgg: {per_set}; {per_model}"


def add_arguments(p):
    p.add_argument("--model", choices=MODELS,
                   help="vgg (default; shaped per data set) or a reference network of fastact.models "
                        "(3x32x32 input: cifar10, their default, or digits shown as 3x32x32 images)")
    p.add_argument("--dataset", choices=sorted(data.DATASETS),
                   help="default: digits for vgg, cifar10 for the reference networks; mnist and cifar10 "
                        "read their files from --data-dir")
    p.add_argument("--classes", help="comma-separated class names to train on, relabelled 0..k-1 in "
                   "this order (default: all; airplane,bird for the reference networks)")
    p.add_argument("--n-chans1", type=int, help="net_*: channels of conv1 (default 32)")
    p.add_argument("--n-blocks", type=int, help="net_res_deep: residual blocks (default 10)")
    p.add_argument("--data-dir", help="directory holding the MNIST IDX files or the CIFAR-10 batches")
    p.add_argument("--epochs", type=int, help="epochs to train, >= 1 (default: " + _defaults("epochs") + ")")
    p.add_argument("--batch-size", type=int, help="images per step, >= 1 (default: " + _defaults("batch_size")
                   + ")")
    p.add_argument("--lr", type=float, help="learning rate, > 0 (default: " + _defaults("lr") + ")")
    p.add_argument("--optimizer", choices=["sgd", "adam"], help="default: " + _defaults("optimizer"))
    p.add_argument("--momentum", type=float, help="SGD momentum, 0 <= m < 1 (default 0.9)")
    p.add_argument("--activation", help="any elementwise activation of fastact, or prelu (default: relu for "
                   "vgg; torchvision's networks keep their own unless one is given)")
    p.add_argument("--seed", type=int, help="seed of the initial weights and of the batch order (default 0)")
    p.add_argument("--dtype", choices=["float32", "float64"],
                   help="precision of the weights and the computation (default float32)")
    p.add_argument("--checkpoint", metavar="PATH", help="write a checkpoint here after every epoch")
    p.add_argument("--resume", metavar="PATH", help="continue the run saved in this checkpoint, with its "
                   "configuration; --epochs (to train on), --lr and --momentum may change, other options "
                   "only repeat it")
    p.add_argument("--plot", metavar="PATH", help="training-curve PNG (default: beside the checkpoint, "
                   "else runs/train-<dataset>[-<model>].png)")
    p.add_argument("--limit", type=int, help="use only the first N training images, N >= 1 (quick runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--keep-going", action="store_true",
                   help="keep training after a step whose loss is NaN or infinite (by default training "
                        "stops there with an error, leaving the last checkpoint as it was)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI: run under mpiexec -n N (needs the mpi extra, mpi4py); "
                        "--batch-size is the global batch, split evenly over the N ranks")
    p.add_argument("--sync-batchnorm", action="store_true",
                   help="with --distributed: BatchNorm uses the global batch's statistics "
                        "(default: each rank's own, as PyTorch's DDP)")
    p.add_argument("--mpi-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="with --distributed: abort the job when one collective takes longer than this "
                        "(a rank died or hangs; default 300)")


def config_from_args(args):
    """The run's configuration (the dict that checkpoints store) from ``train``'s parsed options: the
    data set's and model's defaults for every option not given; ValueError for a value out of range
    (:func:`check_args`) or a bad combination."""
    check_args(args)
    opt = {k: _given(getattr(args, k, None), v) for k, v in OPTION_DEFAULTS.items()}
    model = opt["model"]
    ref = MODEL_PRESETS.get(model)
    dataset = args.dataset or (ref["dataset"] if ref else "digits")
    preset = dict(PRESETS[dataset])
    classes = getattr(args, "classes", None)
    if ref:
        if dataset not in ("cifar10", "digits"):
            raise ValueError(f"--model {model} takes 3x32x32 images: it needs --dataset cifar10, or digits "
                             f"(scikit-learn's digits shown as 3x32x32 images, no download), not {dataset}")
        if model in TORCHVISION_PRESETS:
            # the network's own activations unless one is given (then it replaces all of them)
            opt["activation"] = getattr(args, "activation", None)
        elif opt["activation"] != "relu":
            raise ValueError(f"--model {model} is a fixed architecture with ReLU; --activation "
                             f"{opt['activation']} applies to --model vgg and torchvision's networks only")
        preset.update({k: ref[k] for k in ("epochs", "batch_size", "lr", "optimizer")})
        preset.update(cfg=None, hidden=None, in_channels=3, input_size=32)
        if dataset == ref["dataset"]:
            classes = classes or ref["classes"]
    if classes is not None:
        labels = data.class_indices(dataset, classes)  # DataError naming the valid names
        classes = [data.CLASSES[dataset][i] for i in labels]
    n_chans1 = opt["n_chans1"] if model in models.REFERENCE_NETS else None
    n_blocks = opt["n_blocks"] if model == "net_res_deep" else None
    cfg = dict(dataset=dataset, model=model, cfg=preset["cfg"], hidden=preset["hidden"],
               in_channels=preset["in_channels"], input_size=preset["input_size"],
               activation=opt["activation"], classes=classes, n_chans1=n_chans1, n_blocks=n_blocks,
               seed=opt["seed"], dtype=opt["dtype"],
               num_classes=len(data.CLASSES[dataset]) if classes is None else len(classes),
               epochs=_given(args.epochs, preset["epochs"]),
               batch_size=_given(args.batch_size, preset["batch_size"]), lr=_given(args.lr, preset["lr"]),
               optimizer=args.optimizer or preset["optimizer"], momentum=opt["momentum"])
    return cfg


def _given(value, default):
    """The user's value when they gave one (0 included), else the default."""
    return default if value is None else value


def check_args(args):
    """ValueError naming the option for every value ``train`` cannot use as given (before any work):
    a value the user gave is used as it is or refused, never replaced by a default."""
    def bad(flag, want, value):
        raise ValueError(f"{flag} must be {want}, got {value!r}")
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size),
                        ("--limit", getattr(args, "limit", None))):
        if value is not None and value < 1:
            bad(flag, "at least 1", value)
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        bad("--lr", "a finite number > 0", args.lr)
    momentum = getattr(args, "momentum", None)
    if momentum is not None and not (math.isfinite(momentum) and 0 <= momentum < 1):
        bad("--momentum", "a finite number in [0, 1)", momentum)
    for flag, value in (("--n-chans1", getattr(args, "n_chans1", None)),
                        ("--n-blocks", getattr(args, "n_blocks", None))):
        if value is not None and value < 1:
            bad(flag, "at least 1", value)
    timeout = getattr(args, "mpi_timeout", 1.0)
    if not (math.isfinite(timeout) and timeout > 0):
        bad("--mpi-timeout", "a finite number of seconds > 0", timeout)


class TrainingDiverged(RuntimeError):
    """A training step's loss was NaN or infinite; the message names the epoch, the step and the likely
    causes."""


def build(cfg):
    """(model, optimizer) of a run's config (the dict that checkpoints store)."""
    name = cfg.get("model", "vgg")
    dtype = np.dtype(cfg["dtype"])
    if name == "vgg":
        model = models.vgg(cfg["cfg"], in_channels=cfg["in_channels"], num_classes=cfg["num_classes"],
                           input_size=cfg["input_size"], hidden=tuple(cfg["hidden"]),
                           activation=cfg["activation"], seed=cfg["seed"], dtype=dtype)
    elif name in TORCHVISION_PRESETS:
        model = models.TORCHVISION_NETS[name](num_classes=cfg["num_classes"], seed=cfg["seed"], dtype=dtype)
        if cfg.get("activation") is not None:
            models.replace_activations(model, cfg["activation"])
    else:
        kw = dict(n_chans1=cfg["n_chans1"], num_classes=cfg["num_classes"], seed=cfg["seed"], dtype=dtype)
        if cfg.get("n_blocks") is not None:
            kw["n_blocks"] = cfg["n_blocks"]
        model = MODEL_PRESETS[name]["build"](**kw)
    if cfg["optimizer"] == "adam":
        opt = optim.Adam(model.parameters(), lr=cfg["lr"])
    else:
        opt = optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
    return model, opt


#: the batch size of the per-epoch evaluation
EVAL_BATCH = 256


def warm_up(cfg, n_train, n_test, nranks=1, notice=None):
    """Compile (or load from the kernel cache) every kernel of the run ``cfg`` on ``n_train`` training and
    ``n_test`` test images, on a throwaway copy of its model (:func:`fastact.warmup.warm_up`); returns
    its :class:`fastact.warmup.Report`. With ``nranks`` > 1, the batch sizes are one rank's share."""
    from . import warmup

    def make_job():
        model, opt = build(cfg)
        return model, opt, nn.CrossEntropyLoss()

    def share(sizes):
        return sorted({s for b in sizes for s in (b // nranks, -(-b // nranks)) if s > 0})

    train = share(warmup.batch_sizes(n_train, cfg["batch_size"]))
    test = warmup.batch_sizes(-(-n_test // nranks), EVAL_BATCH)
    return warmup.warm_up(make_job, (cfg["in_channels"], cfg["input_size"], cfg["input_size"]),
                          train_batches=train, eval_batches=test, num_classes=cfg["num_classes"],
                          dtype=cfg["dtype"], notice=notice)


def evaluate(model, x, y, batch_size=EVAL_BATCH, comm=None, with_loss=False):
    """Test accuracy (and, ``with_loss``, the mean cross-entropy) of ``model`` in eval mode. With an
    MPI ``comm``, each rank evaluates its contiguous slice of (x, y) and the sums and counts are
    added with one allreduce, so every rank returns the whole set's figures."""
    from . import distributed
    from .loss import cross_entropy
    model.eval()
    if comm is not None:
        a, b = distributed.shard_bounds(len(y), comm)
        x, y = x[a:b], y[a:b]
    correct, loss_sum = 0, 0.0
    for i in range(0, len(y), batch_size):
        yb = y[i:i + batch_size]
        logits = model(x[i:i + batch_size])
        correct += int(np.sum(np.argmax(logits, axis=1) == yb))
        if with_loss:
            loss_sum += cross_entropy(logits, yb) * len(yb)
    correct, loss_sum, count = distributed.allreduce_sum([correct, loss_sum, len(y)], comm) \
        if comm is not None else (correct, loss_sum, len(y))
    acc = float(correct) / max(count, 1)
    return (acc, float(loss_sum) / max(count, 1)) if with_loss else acc


def train_step(model, opt, loss_fn, x, y, *, grad_scale=1.0, comm=None, check_loss=None):
    """One optimizer step on the batch ``(x, y)``; returns ``(loss, logits)``.

    Forward and loss, then (``check_loss(loss)`` first, which may raise to stop before the weights
    change) the backward of ``grad_scale`` times the loss, the average of the gradients over the MPI
    ranks of ``comm`` when there is one, and the update.
    """
    from . import distributed
    logits = model(x)
    loss = loss_fn(logits, y)
    if check_loss is not None:
        check_loss(loss)
    opt.zero_grad()
    model.backward(loss_fn.backward(grad_scale), need_input_grad=False)
    if comm is not None:
        distributed.allreduce_gradients(model, comm)
    opt.step()
    return loss, logits


#: images whose batch statistics re-estimate BatchNorm's running statistics before an evaluation, for
#: models whose BatchNorm momentum is below 0.1 (MobileNetV3's 0.01)
BN_RECOMPUTE_IMAGES = 512


def recompute_batchnorm_stats(model, x, batch_size=64):
    """Re-estimate every BatchNorm2d's running statistics as the average of its batch statistics over
    ``x`` (training-mode forward passes in batches of ``batch_size``, no backward), keeping
    ``momentum`` and ``num_batches_tracked`` as they were; Dropout stays off, so its random stream is
    untouched. The training itself never reads the running statistics, only evaluation does.

    Why: with MobileNetV3's momentum of 0.01 the running statistics follow the weights hundreds of
    steps late, and a short run (five epochs of the digits: 115 steps) evaluates a network with the
    statistics of its first steps (chance accuracy, 11%, where the batch statistics give 95%).
    Re-estimating them from a few hundred images is the "precise BatchNorm" of Wu and Johnson,
    "Rethinking 'Batch' in BatchNorm" (2021).

    >>> import numpy as np
    >>> from fastact import nn, train
    >>> bn = nn.BatchNorm2d(1, momentum=0.01)
    >>> x = np.full((4, 1, 2, 2), 3.0, np.float32) + np.arange(4, dtype=np.float32)[:, None, None, None]
    >>> train.recompute_batchnorm_stats(bn, x, batch_size=2)
    >>> bn.running_mean, bn.momentum, int(bn.num_batches_tracked)
    (array([4.5], dtype=float32), 0.01, 0)
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.track_running_stats]
    if not bns or len(x) == 0:
        return
    was_training = model.training
    kept = [(m.momentum, m.num_batches_tracked.copy()) for m in bns]
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.training = False
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # the cumulative average of the batches' statistics
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        for m, (momentum, n) in zip(bns, kept):
            m.momentum = momentum
            m.num_batches_tracked[...] = n
        model.train(was_training)


def _sequentials(model):
    """(path, Sequential) of every nn.Sequential in ``model``'s tree, the model itself included."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Sequential)]


def dead_units(model, comm=None):
    """{layer: fraction of its units that passed no gradient for any input} from what the ``activity``
    of every ``Sequential`` in ``model`` recorded since it was set to ``{}`` (a unit is alive if it
    passed gradient on any rank of ``comm``). A layer is named by its index in the model when the model
    is the Sequential ("3"), else by its path ("features.1.conv.0.2"); ``{}`` for a model without
    Sequentials of activations (ResNet's blocks fuse their ReLUs and record nothing)."""
    from . import distributed
    act = [(f"{name}.{k}" if name else str(k), v) for name, seq in _sequentials(model)
           for k, v in sorted((seq.activity or {}).items())]  # each Sequential's layers in order
    if comm is not None and act:
        fired = distributed.allreduce_sum(np.concatenate([v.ravel() for _, v in act]), comm) > 0
        sizes = np.cumsum([v.size for _, v in act])[:-1]
        act = [(k, f) for (k, _), f in zip(act, np.split(fired, sizes))]
    return {k: float(1.0 - np.mean(v)) for k, v in act}


def train_epoch(model, opt, loss_fn, x, y, cfg, epoch, progress=None, comm=None, keep_going=False):
    """One epoch; returns (mean loss, train accuracy, images/s, dead-unit fraction per layer).

    A step whose loss is NaN or infinite raises :class:`TrainingDiverged` before it changes the
    weights, unless ``keep_going``. With an MPI ``comm`` (data-parallel) each global batch is split
    into the ranks' contiguous slices, each rank's gradient weighted by its slice's share, and the
    returned figures are those of the whole epoch over all ranks.
    """
    from . import distributed
    model.train()
    # each Dropout draws its masks from a generator seeded by (seed, epoch, its index), so that a run
    # resumed from a checkpoint drops the same units as the run that went on
    for i, m in enumerate(m for m in model.modules() if isinstance(m, nn.Dropout)):
        m.rng = np.random.default_rng([cfg["seed"], epoch, i])
    seqs = [m for _, m in _sequentials(model)]
    for m in seqs:
        m.activity = {}  # each Sequential records which units passed gradient (dead_units)
    nranks = 1 if comm is None else comm.Get_size()
    nsteps = -(-len(y) // cfg["batch_size"])
    total_loss, correct, seen = 0.0, 0, 0
    t0 = time.perf_counter()
    for step, (xb, yb) in enumerate(data.batches(x, y, cfg["batch_size"], seed=cfg["seed"], epoch=epoch),
                                    start=1):
        xs, ys = distributed.shard(xb, yb, comm) if comm is not None else (xb, yb)

        def check_loss(loss, step=step):
            if not (keep_going or math.isfinite(loss)):
                raise TrainingDiverged(_diverged(loss, cfg, epoch, step, nsteps, x))

        # a rank's mean-loss gradient, weighted by its slice's share of the global batch, times the
        # number of ranks for the average over them (1 unless the last batch splits unevenly)
        loss, logits = train_step(model, opt, loss_fn, xs.astype(cfg["dtype"], copy=False), ys,
                                  grad_scale=len(ys) * nranks / len(yb), comm=comm, check_loss=check_loss)
        total_loss += loss * len(ys)
        correct += int(np.sum(np.argmax(logits, axis=1) == ys))
        seen += len(ys)
        if progress is not None:
            progress.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}",
                                 img_s=f"{seen * nranks / (time.perf_counter() - t0):.0f}", refresh=False)
            progress.update(1)
    dead = dead_units(model, comm)
    for m in seqs:
        m.activity = None
    if comm is not None:
        total_loss, correct, seen = distributed.allreduce_sum([total_loss, correct, seen], comm)
        correct, seen = int(correct), int(seen)
    return total_loss / seen, correct / seen, seen / (time.perf_counter() - t0), dead


def _diverged(loss, cfg, epoch, step, nsteps, x):
    """The message of a TrainingDiverged: where, and what likely caused it."""
    nonfinite = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    causes = [f"a learning rate too large for this model (lr {cfg['lr']}"
              + (f", momentum {cfg['momentum']})" if cfg["optimizer"] == "sgd" else ")")]
    if nonfinite:
        causes.insert(0, f"the training data, which holds {nonfinite} NaN or infinite values")
    return (f"the loss was {loss} at epoch {epoch}, step {step} of {nsteps}: training stopped before "
            f"that step changed the weights (a checkpoint written after an earlier epoch is as it was). "
            f"Likely cause: {' or '.join(causes)}. --keep-going trains on regardless.")


def plot_history(history, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [h["epoch"] for h in history]
    layers = sorted({k for h in history for k in h["dead"]},
                    key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else k))
    if any(not k.isdigit() for k in layers):  # nested blocks' layers (a MobileNet's): too many for a line each
        history = [dict(h, dead={"mean over layers": np.mean(list(h["dead"].values())) if h["dead"] else np.nan,
                                 "most in one layer": max(h["dead"].values(), default=np.nan)}) for h in history]
        layers = ["mean over layers", "most in one layer"]
    fig, axes = plt.subplots(1, 3 if layers else 2, figsize=(13 if layers else 9, 3.6))
    axes[0].plot(ep, [h["loss"] for h in history], "o-")
    axes[0].set(title="training loss", xlabel="epoch", ylabel="cross-entropy")
    axes[1].plot(ep, [h["train_acc"] for h in history], "o-", label="train")
    axes[1].plot(ep, [h["test_acc"] for h in history], "s-", label="test")
    axes[1].set(title="accuracy", xlabel="epoch")
    axes[1].legend()
    for k in layers:
        axes[2].plot(ep, [h["dead"].get(k, np.nan) for h in history], "o-", label=f"layer {k}" if k.isdigit() else k)
    if layers:
        axes[2].set(title="dead units (zero gradient all epoch)", xlabel="epoch", ylim=(-0.02, 1.02))
        axes[2].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args):
    if getattr(args, "distributed", False):
        return _run_distributed(args)
    if getattr(args, "sync_batchnorm", False):
        print("fastact train: error: --sync-batchnorm needs --distributed (under mpiexec)", file=sys.stderr)
        return 2
    try:
        return _run(args)
    except (checkpoint.CheckpointError, data.DataError, ValueError) as exc:
        print(f"fastact train: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"fastact train: error: {exc}", file=sys.stderr)
        return 1


def _run_distributed(args):
    """``--distributed``: the run on this MPI rank. Any exception past the (collectively checked)
    setup prints its traceback and aborts every rank; so does a collective that outlives
    ``--mpi-timeout``."""
    from . import distributed
    try:
        distributed.set_timeout(args.mpi_timeout)
        comm = distributed.init()
    except (ImportError, ValueError) as exc:
        print(f"fastact train: error: {exc}", file=sys.stderr)
        return 2
    distributed.install_excepthook(comm)
    try:
        return _run(args, comm)
    except distributed.DivergenceError as exc:  # raised on every rank alike: no rank is left waiting
        if comm.Get_rank() == 0:
            print(f"fastact train: error: {exc}", file=sys.stderr)
        return 1
    except BaseException:  # noqa: B036 -- SystemExit and KeyboardInterrupt too: the others must not wait
        sys.stderr.write(traceback.format_exc() + f"fastact train: rank {comm.Get_rank()} of "
                         f"{comm.Get_size()} failed; aborting the job\n")
        distributed.abort(1, comm)


def load_data(cfg, args):
    """(x_train, y_train, x_test, y_test) of the run: its data set (the digits as 3x32x32 images for the
    reference networks), classes and ``--limit``."""
    if cfg["dataset"] in data.SOURCES and not args.data_dir:
        raise data.DataError(f"--dataset {cfg['dataset']} reads its files from --data-dir DIR: "
                             f"{data.SOURCES[cfg['dataset']]}")
    if cfg["dataset"] == "digits" and cfg["input_size"] == 32:
        xtr, ytr, xte, yte = data.load_digits(seed=cfg["seed"], rgb32=True)
    else:
        xtr, ytr, xte, yte = data.load(cfg["dataset"], args.data_dir, cfg["seed"])
    if cfg["classes"] is not None:
        labels = data.class_indices(cfg["dataset"], cfg["classes"])
        xtr, ytr = data.select_classes(xtr, ytr, labels)
        xte, yte = data.select_classes(xte, yte, labels)
    if args.limit is not None:
        xtr, ytr = xtr[:args.limit], ytr[:args.limit]
    if len(ytr) == 0:
        raise data.DataError(f"no training images of the classes {cfg['classes']} in {cfg['dataset']}")
    return xtr, ytr, xte, yte


def run_warmup(args):
    """``python -m fastact warmup [train's options]``: compile every kernel of that training run into the
    kernel cache (a throwaway step and evaluation per batch size; nothing is trained or written but the
    cache) and print how many kernels it compiled and how long that took."""
    t0 = time.perf_counter()
    try:
        if args.resume:  # the run the checkpoint continues
            check_args(args)
            cfg = resume_config(args, checkpoint.read_header(args.resume)[0].get("config", {}))
        else:
            cfg = config_from_args(args)
        xtr, ytr, xte, yte = load_data(cfg, args)
    except (checkpoint.CheckpointError, data.DataError, ValueError) as exc:
        print(f"fastact warmup: error: {exc}", file=sys.stderr)
        return 2
    report = warm_up(cfg, len(ytr), len(yte))
    print(f"fastact warmup: {report.summary()}; {time.perf_counter() - t0:.1f} s in all")
    for t, name in report.per_kernel[:8]:
        print(f"  {t:6.2f} s  {name}")
    return 0


def resume_config(args, saved):
    """The configuration of ``--resume``: the checkpoint's (``saved``, its header's ``config``), with
    the options given on this command line that may change (``_RESUME_OVERRIDES``) applied; an option
    that would change anything else raises CheckpointError naming it."""
    saved = {k: saved.get(k, _LEGACY.get(k)) for k in set(_RESUME_KEYS) | set(_RESUME_OVERRIDES)}
    # the options as the checkpoint's run gave them, then this command line's on top
    ns = argparse.Namespace(**vars(args))
    for key in ("dataset", "model", "n_chans1", "n_blocks", "epochs", "batch_size", "lr", "optimizer",
                "momentum", "activation", "seed", "dtype"):
        if getattr(args, key, None) is None and saved.get(key) is not None:
            setattr(ns, key, saved[key])
    if getattr(args, "classes", None) is None and saved["classes"] is not None:
        ns.classes = ",".join(saved["classes"])
    # an option given that differs from the run's is named as such (before it can fail as a
    # combination with the run's other options)
    given = {k: getattr(args, k) for k in ("dataset", "model", "n_chans1", "n_blocks", "batch_size",
                                            "optimizer", "activation", "seed", "dtype")
             if getattr(args, k, None) is not None and getattr(args, k) != saved.get(k)}
    try:
        cfg = config_from_args(ns)
    except ValueError:
        if not given:
            raise
        cfg = dict(saved, **given)
    diff = [k for k in _RESUME_KEYS if saved[k] != cfg.get(k)]
    if diff:
        raise checkpoint.CheckpointError(
            f"{args.resume} was written by a different run: " +
            ", ".join(f"{k} {saved[k]!r} (now {cfg.get(k)!r})" for k in diff) +
            "; --resume continues that run (leave those options out), or start a new one without it")
    return cfg


def _setup(args, comm):
    """Config, model, optimizer, resumed state and data; raises the user-facing errors. With ``comm``,
    every rank reads the checkpoint's header (its configuration) and rank 0 alone its arrays (the
    caller broadcasts them)."""
    lead = comm is None or comm.Get_rank() == 0
    loaded = None
    if args.resume:
        check_args(args)
        header, _ = checkpoint.read_header(args.resume)   # validates before any large read
        cfg = resume_config(args, header.get("config", {}))
    else:
        cfg = config_from_args(args)
    model, opt = build(cfg)
    if args.resume and lead:
        expect = {k: v.shape for k, v in model.state_dict().items()}
        loaded = checkpoint.load(args.resume, expect_model=expect)
    xtr, ytr, xte, yte = load_data(cfg, args)
    if comm is not None:
        n, batch = comm.Get_size(), cfg["batch_size"]
        if batch % n:
            raise ValueError(f"--batch-size {batch} does not split evenly over the {n} ranks "
                             f"(mpiexec -n {n}): use a multiple of {n}")
        last = len(ytr) % batch
        if 0 < last < n:
            raise ValueError(f"the last batch of each epoch has {last} image(s) ({len(ytr)} % {batch}), "
                             f"fewer than the {n} ranks: change --batch-size or --limit")
    return cfg, model, opt, loaded, (xtr, ytr, xte, yte)


def _run(args, comm=None):
    from . import distributed
    lead = comm is None or comm.Get_rank() == 0
    say = print if lead else (lambda *a, **k: None)
    if comm is None:
        cfg, model, opt, loaded, (xtr, ytr, xte, yte) = _setup(args, None)
    else:
        # every rank reaches the allgather, so an error on any rank (a bad checkpoint, read by rank 0
        # alone) ends every rank with exit code 2 instead of leaving the others waiting
        err = None
        try:
            cfg, model, opt, loaded, (xtr, ytr, xte, yte) = _setup(args, comm)
        except (checkpoint.CheckpointError, data.DataError, ValueError) as exc:
            err = f"{exc}" if comm.Get_rank() == 0 else f"rank {comm.Get_rank()}: {exc}"
        with distributed.collective("the setup's error check", comm):
            errs = comm.allgather(err)
        first = next((e for e in errs if e is not None), None)
        if first is not None:
            say(f"fastact train: error: {first}", file=sys.stderr)
            return 2
        with distributed.collective("broadcast of the checkpoint", comm):
            loaded = comm.bcast(loaded, root=0)  # arrays and a JSON-able header, between our own ranks
        if args.sync_batchnorm:
            distributed.sync_batchnorm(model, comm)
    history, start = [], 1
    if loaded is not None:
        header, mstate, ostate = loaded
        model.load_state_dict(mstate)
        opt.load_state_dict(ostate)
        history = header["history"]
        start = header["epoch"] + 1
        if start > cfg["epochs"]:
            acc = f" (final test accuracy {history[-1]['test_acc']:.2%})" if history else ""
            say(f"fastact train: the run in {args.resume} finished its {header['epoch']} epochs{acc}; "
                f"--epochs N with N > {header['epoch']} trains it on")
            return 0
    if comm is not None:
        distributed.broadcast_parameters(model, comm=comm)  # every rank starts from rank 0's weights
    if cfg["model"] == "vgg":
        arch = f"vgg{cfg['cfg']} + fc{cfg['hidden']}, {cfg['activation']}"
    elif cfg["model"] in TORCHVISION_PRESETS:
        arch = cfg["model"] + ("" if cfg["activation"] is None else f" with {cfg['activation']}")
    else:
        arch = f"{cfg['model']}(n_chans1={cfg['n_chans1']}" + \
            (f", n_blocks={cfg['n_blocks']})" if cfg["n_blocks"] is not None else ")")
    ranks = "" if comm is None else \
        f", {comm.Get_size()} ranks x {cfg['batch_size'] // comm.Get_size()}" + \
        (", synchronised BatchNorm" if args.sync_batchnorm else "")
    say(f"fastact train: {cfg['dataset']} ({len(ytr)} train, {len(yte)} test images"
        f"{'' if cfg['classes'] is None else ', classes ' + ','.join(cfg['classes'])}), {arch}, "
        f"{cfg['optimizer']} lr={cfg['lr']}, batch {cfg['batch_size']}{ranks}, {cfg['dtype']}")
    loss_fn = nn.CrossEntropyLoss()
    plot_path = args.plot or (os.path.splitext(args.checkpoint)[0] + ".png" if args.checkpoint
                              else os.path.join("runs", f"train-{cfg['dataset']}"
                                               f"{'' if cfg['model'] == 'vgg' else '-' + cfg['model']}.png"))
    nbatches = -(-len(ytr) // cfg["batch_size"])
    # every kernel compiled (or loaded) before the first epoch, so that its images/s and ETA are the
    # training's; the first kernel that compiles says so, and the end how many took how long
    noticed = []

    def notice(line):
        noticed.append(line)
        say(f"fastact train: {line}", flush=True)

    if start <= cfg["epochs"]:
        report = warm_up(cfg, len(ytr), len(yte), 1 if comm is None else comm.Get_size(),
                         notice=notice if lead else None)
    if noticed:
        say(f"fastact train: {report.summary()}; later runs load them", flush=True)
    # the dead-unit report covers the activations whose gradient can be zero (ReLU, ReLU6, hardtanh...);
    # a GELU, SiLU or Leaky ReLU unit always passes some gradient
    act_layers = [i for i, m in enumerate(model) if nn.can_die(m)] if isinstance(model, nn.Sequential) else []
    if isinstance(model, nn.Sequential) and not act_layers:
        say(f"fastact train: no dead-unit report: the gradient of {cfg['activation']} is never zero")
    slow_bn = [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.momentum is not None
               and m.momentum < 0.1]
    if slow_bn and start <= cfg["epochs"]:
        say(f"fastact train: BatchNorm momentum {min(slow_bn)}: the running statistics are re-estimated "
            f"from {min(BN_RECOMPUTE_IMAGES, len(ytr))} training images before each evaluation")
    for epoch in range(start, cfg["epochs"] + 1):
        progress = None
        if not args.quiet and lead:
            from tqdm import tqdm
            progress = tqdm(total=nbatches, desc=f"epoch {epoch}/{cfg['epochs']}", unit="batch",
                            file=sys.stdout, dynamic_ncols=True)
        t0 = time.perf_counter()
        loss, acc, rate, dead = train_epoch(model, opt, loss_fn, xtr, ytr, cfg, epoch, progress, comm,
                                            keep_going=getattr(args, "keep_going", False))
        if progress is not None:
            progress.close()
        if slow_bn:
            recompute_batchnorm_stats(model, xtr[:BN_RECOMPUTE_IMAGES].astype(cfg["dtype"], copy=False),
                                      cfg["batch_size"])
        if comm is not None:
            if not args.sync_batchnorm:  # per-rank BatchNorm statistics: rank 0's, as DDP keeps them
                distributed.broadcast_buffers(model, comm=comm)
            distributed.check_identical(model, comm)  # DivergenceError on every rank if they differ
        test_acc = evaluate(model, xte, yte, comm=comm)
        history.append(dict(epoch=epoch, loss=loss, train_acc=acc, test_acc=test_acc, dead=dead,
                            images_per_s=rate, seconds=time.perf_counter() - t0))
        if isinstance(model, nn.Sequential):
            dead_txt = ", ".join(f"layer {k} ({type(model[int(k)]).__name__}): {v:.1%}"
                                 for k, v in dead.items() if k.isdigit() and int(k) in act_layers)
        elif dead:
            worst = max(dead, key=dead.get)
            dead_txt = (f"{np.mean(list(dead.values())):.1%} on average over {len(dead)} activation layers, "
                        f"most in {worst}: {dead[worst]:.1%}")
        else:
            dead_txt = ""
        say(f"epoch {epoch}: loss {loss:.4f}, train acc {acc:.2%}, test acc {test_acc:.2%}, "
            f"{rate:.0f} images/s" + (f"; dead units (zero gradient for every training image): {dead_txt}"
                                       if dead_txt else ""))
        if args.checkpoint and lead:
            checkpoint.save(args.checkpoint, dict(config=cfg, epoch=epoch, history=history),
                            model.state_dict(), opt.state_dict())
    if history and lead:
        title = f"fastact: {cfg['dataset']}, " + (cfg["activation"] if cfg["model"] == "vgg" else cfg["model"])
        plot_history(history, plot_path, title)
        print(f"training curves: {plot_path}")
        print(f"final test accuracy: {history[-1]['test_acc']:.2%}")
    return 0


def history_json(path):
    """The history stored in a checkpoint, as JSON text (for scripts)."""
    header, _ = checkpoint.read_header(path)
    return json.dumps(header["history"], indent=1)
