"""Compile the kernels of a training job before it starts: ``python -m fastact warmup``.

fastact's kernels are compiled by Numba for the machine that runs them, the first time each is needed,
and kept in an on-disk cache (``fastact.config.CACHE_DIR``; the README's notes say where and how it is
keyed, docs/performance.md what a first run costs). A job's first run therefore starts with seconds of
compilation, and every later run on the same machine loads the machine code instead. :func:`warm_up` runs one training step and one evaluation of a
throwaway copy of the job's model at each batch size the job will use, so that every kernel the job
needs is compiled (or loaded) before the first timed step: ``python -m fastact train`` calls it before
its first epoch (the progress bar's images/s and ETA then exclude compilation), and ``python -m
fastact warmup`` runs it alone, e.g. in a Docker build step or on a cluster's login node, with the same
options as ``train``.

>>> import fastact as fa
>>> from fastact import models, nn, optim, warmup
>>> def job():
...     net = models.vgg([4, "M"], in_channels=1, num_classes=3, input_size=4, hidden=(), seed=0)
...     return net, optim.SGD(net.parameters(), lr=0.1), nn.CrossEntropyLoss()
>>> report = warmup.warm_up(job, (1, 4, 4), train_batches=[2], eval_batches=[2], num_classes=3)
>>> report.kernels >= 0 and report.seconds > 0
True
"""

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import _runtime

__all__ = ["Report", "warm_up", "batch_sizes", "compile_counter"]


@dataclass
class Report:
    """What :func:`warm_up` did: ``kernels`` compiled (not loaded from the cache), in ``seconds`` all
    told, and the seconds per kernel, slowest first."""
    kernels: int
    seconds: float
    cache_dir: str
    per_kernel: list = field(default_factory=list)

    def summary(self):
        where = f"cached in {self.cache_dir}" if self.cache_dir else "kernel cache disabled"
        return f"{self.kernels} kernels compiled in {self.seconds:.1f} s ({where})"


class compile_counter:
    """Context manager counting Numba compilations inside it: ``.events`` is a list of ``(seconds,
    kernel name)`` of the outermost compilations (a kernel's own callees are part of its time), and
    ``.count`` their number. Loading a kernel from the on-disk cache is not a compilation.
    ``on_first(name)``, if given, is called when the first compilation starts."""

    def __init__(self, on_first=None):
        self.on_first = on_first
        self.events = []
        self._depth = 0
        self._lock = threading.Lock()

    def __enter__(self):
        from numba.core import event

        counter = self

        class _Listener(event.Listener):
            def __init__(self):
                self.starts = {}

            def on_start(self, ev):
                with counter._lock:
                    counter._depth += 1
                    first, counter.on_first = counter.on_first, None
                if first is not None:
                    first(getattr(getattr(ev.data["dispatcher"], "py_func", None), "__name__", "?"))
                self.starts[id(ev.data["dispatcher"]), str(ev.data["args"])] = time.perf_counter()

            def on_end(self, ev):
                key = id(ev.data["dispatcher"]), str(ev.data["args"])
                t = time.perf_counter() - self.starts.pop(key, time.perf_counter())
                with counter._lock:
                    counter._depth -= 1
                    if counter._depth == 0:
                        d = ev.data["dispatcher"]
                        name = getattr(getattr(d, "py_func", None), "__name__", None) or str(d)
                        counter.events.append((t, name))

        self._listener = _Listener()
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc):
        from numba.core import event
        event.unregister("numba:compile", self._listener)
        return False

    @property
    def count(self):
        return len(self.events)


def batch_sizes(n, batch_size):
    """The batch sizes a pass over ``n`` items in batches of ``batch_size`` uses: ``[batch_size]``, plus
    the last, smaller batch when there is one (its kernels may differ: small calls run serially)."""
    sizes = [min(batch_size, n)] if n else []
    if n > batch_size and n % batch_size:
        sizes.append(n % batch_size)
    return sizes


def warm_up(make_job, input_shape, *, train_batches, eval_batches, num_classes, dtype=np.float32,
            notice=None):
    """Compile (or load from the cache) every kernel of a training job, without touching its model.

    Parameters
    ----------
    make_job : callable
        ``make_job() -> (model, optimizer, loss_fn)``: a fresh copy of the job's model, optimizer and
        loss, built as the job builds them (same layers, dtype and activation), which the warm-up trains
        for one step per batch size and then throws away.
    input_shape : tuple
        One input's shape, e.g. ``(1, 8, 8)``.
    train_batches, eval_batches : sequence of int
        The batch sizes of the job's training steps and of its evaluation (see :func:`batch_sizes`).
    num_classes : int
        Labels are drawn from ``range(num_classes)``.
    dtype : numpy dtype, default float32
    notice : callable, optional
        Called with one line of text when the first kernel starts compiling ("compiling kernels for
        this CPU (first run only; cached in DIR) ..."): ``train`` prints it. Not called when every
        kernel was compiled or is in the cache.

    Returns
    -------
    Report
    """
    dtype = np.dtype(dtype)
    cache = _runtime.cache_path() or ""
    on_first = None
    if notice is not None:
        where = f"cached in {cache}" if cache else "the kernel cache is disabled"
        line = f"compiling kernels for this CPU (first run only; {where}) ..."

        def on_first(name):
            notice(line)
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    with compile_counter(on_first) as counter:
        model, opt, loss_fn = make_job()
        for n in train_batches:
            model.train()
            if hasattr(model, "activity"):
                model.activity = {}  # the job's dead-unit bookkeeping runs kernels of its own
            x = rng.standard_normal((n, *input_shape)).astype(dtype)
            y = rng.integers(0, num_classes, n)
            loss_fn(model(x), y)
            opt.zero_grad()
            model.backward(loss_fn.backward(), need_input_grad=False)
            opt.step()
        if hasattr(model, "activity"):
            model.activity = None
        model.eval()
        for n in eval_batches:
            model(rng.standard_normal((n, *input_shape)).astype(dtype))
    per_kernel = sorted(counter.events, reverse=True)
    return Report(kernels=counter.count, seconds=time.perf_counter() - t0, cache_dir=cache,
                  per_kernel=per_kernel)
