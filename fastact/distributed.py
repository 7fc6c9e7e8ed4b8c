"""Data-parallel training over MPI (mpi4py): one model, one global batch split over N processes.

``mpiexec -n N python -m fastact train --distributed ...`` uses these functions; a script of your own
does the same in five calls (``docs/examples/ddp_digits.py``, ``docs/mpi.md``)::

    comm = distributed.init()                      # MPI.COMM_WORLD, mpi4py imported here
    distributed.broadcast_parameters(model)        # every rank starts from rank 0's weights
    for xb, yb in data.batches(x, y, batch_size, seed=0, epoch=epoch):   # the same order everywhere
        xs, ys = distributed.shard(xb, yb)         # this rank's contiguous slice of the batch
        loss = loss_fn(model(xs), ys)
        opt.zero_grad()
        model.backward(loss_fn.backward())
        distributed.allreduce_gradients(model)     # one in-place Allreduce of all gradients, / N
        opt.step()                                 # the same step on every rank
    distributed.check_identical(model)             # RuntimeError if the ranks' weights differ

Every rank then holds the weights that one process training on the whole batch would, up to float
rounding: the loss is the mean over the global batch, and the mean of the ranks' gradients (means
over equal slices) is the global mean gradient. BatchNorm normalises with each rank's own batch
statistics, as PyTorch's DDP, unless :func:`sync_batchnorm` makes them those of the global batch
(PyTorch's ``SyncBatchNorm``); with it the run equals the one-process run.

Single process: every function takes ``comm=None`` for the communicator that :func:`init` returned;
before :func:`init` (and without mpi4py) that is one process, rank 0 of 1, for which the functions do
what one process needs (``shard`` keeps the whole batch, ``allreduce_gradients`` leaves the
gradients as they are). So the module imports, and its examples run, without mpi4py or MPI.

Failure: a rank that dies must not leave the others waiting for it. :func:`install_excepthook`
makes an uncaught exception print its traceback and ``Abort`` the whole job, and every collective of
this module runs under a watchdog (:func:`set_timeout`, ``--mpi-timeout``) that aborts the job when
one collective takes longer than the timeout (a rank that hangs, or was killed without MPI noticing).

mpi4py is the extra ``mpi`` (``pip install "fastact[mpi]"``: mpi4py and the ``mpich`` wheel, which
provides ``mpiexec``).
"""

import hashlib
import os
import sys
import threading
import time
import traceback
import weakref
from contextlib import contextmanager

import numpy as np

__all__ = ["collective", "init", "rank", "size", "broadcast_parameters", "broadcast_buffers", "allreduce_gradients", "shard",
           "shard_bounds", "checksum", "check_identical", "sync_batchnorm", "BatchNormSync",
           "allreduce_sum", "set_timeout", "install_excepthook", "abort", "DivergenceError",
           "DEFAULT_TIMEOUT"]

#: seconds one collective may take before the watchdog aborts the job (``--mpi-timeout``)
DEFAULT_TIMEOUT = 300.0

_comm = None


class DivergenceError(RuntimeError):
    """The ranks' parameters differ (found by :func:`check_identical`)."""


def init(comm=None):
    """The communicator for data-parallel training (``MPI.COMM_WORLD`` unless ``comm`` is given),
    importing mpi4py on first use; :func:`rank`, :func:`size` and the other functions use it from
    then on.

    Raises
    ------
    ImportError
        mpi4py is not installed; the message names the extra that installs it.
    """
    global _comm
    if comm is None:
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise ImportError("distributed training needs mpi4py: pip install \"fastact[mpi]\" "
                              "(mpi4py and the mpich wheel, which provides mpiexec)") from exc
        comm = MPI.COMM_WORLD
    _comm = comm
    return comm


def _get(comm):
    return _comm if comm is None else comm


def rank(comm=None):
    """This process's rank in ``comm`` (default: :func:`init`'s; 0 before :func:`init`).

    Examples
    --------
    >>> from fastact import distributed
    >>> distributed.rank(), distributed.size()   # a single process (init() not called)
    (0, 1)
    """
    c = _get(comm)
    return 0 if c is None else c.Get_rank()


def size(comm=None):
    """The number of processes in ``comm`` (default: :func:`init`'s; 1 before :func:`init`)."""
    c = _get(comm)
    return 1 if c is None else c.Get_size()


def _mpi():
    from mpi4py import MPI
    return MPI


# --------------------------------------------------------------------------------------- watchdog

class _Watchdog:
    """A daemon thread that aborts the job when one collective outlives the timeout."""

    def __init__(self):
        self.timeout = DEFAULT_TIMEOUT
        self.lock = threading.Lock()
        self.current = None  # (what, deadline, comm)
        self.thread = None

    def _loop(self):
        while True:
            with self.lock:
                cur = self.current
            if cur is not None and time.monotonic() > cur[1]:
                what, _, comm = cur
                sys.stderr.write(f"fastact.distributed: rank {comm.Get_rank()} of {comm.Get_size()}: "
                                 f"{what} did not complete within {self.timeout:g} s (--mpi-timeout); "
                                 f"another rank died or hangs: aborting the job\n")
                abort(1, comm)
                return
            time.sleep(min(1.0, max(self.timeout / 20, 0.05)))

    @contextmanager
    def guard(self, what, comm):
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="fastact-mpi-watchdog", daemon=True)
            self.thread.start()
        with self.lock:
            self.current = (what, time.monotonic() + self.timeout, comm)
        try:
            yield
        finally:
            with self.lock:
                self.current = None


_watchdog = _Watchdog()


def set_timeout(seconds):
    """Abort the job when one collective of this module takes longer than ``seconds`` (default
    :data:`DEFAULT_TIMEOUT`, 300 s): a rank that died without MPI noticing, or hangs, then ends the
    job instead of leaving the others waiting for ever."""
    if not seconds > 0:
        raise ValueError(f"the MPI timeout must be > 0 seconds, got {seconds}")
    _watchdog.timeout = float(seconds)


@contextmanager
def collective(what, comm=None):
    """Context manager around your own collective calls on ``comm``: if the block takes longer than
    the MPI timeout (:func:`set_timeout`), the watchdog prints ``what`` and aborts every rank instead
    of leaving them waiting. Every collective of this module runs inside one.

    >>> from fastact import distributed
    >>> with distributed.collective("allgather of the losses"):   # doctest: +SKIP
    ...     losses = comm.allgather(loss)
    """
    with _watchdog.guard(what, _get(comm)):
        yield


def abort(code=1, comm=None, grace=0.5):
    """Flush the standard streams, wait ``grace`` seconds (mpiexec forwards what this rank printed;
    ``Abort`` kills the launcher's forwarding too) and ``Abort`` every rank of ``comm`` with exit code
    ``code`` (one process: ``os._exit(code)``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(grace)
    c = _get(comm)
    if c is None:
        os._exit(code)
    c.Abort(code)


def install_excepthook(comm=None):
    """Make an uncaught exception (in any thread) print its traceback, with the rank, and abort the
    whole job, so the other ranks do not wait for this one in their next collective."""
    c = _get(comm)

    def hook(exc_type, exc, tb):
        sys.stderr.write("".join(traceback.format_exception(exc_type, exc, tb)) +
                         f"fastact.distributed: uncaught exception on rank {rank(c)} of {size(c)}; "
                         f"aborting the job\n")
        abort(1, c)

    sys.excepthook = hook
    threading.excepthook = lambda args: hook(args.exc_type, args.exc_value, args.exc_traceback)


# ------------------------------------------------------------------------------- model collectives

def broadcast_parameters(model, root=0, comm=None):
    """Copy rank ``root``'s parameters and buffers (BatchNorm's running statistics) to every rank, in
    place; call it after building the model (or loading a checkpoint on ``root``).

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import distributed, nn
    >>> net = nn.Sequential(nn.Linear(3, 2, seed=0))
    >>> distributed.broadcast_parameters(net) is net   # one process: nothing to send
    True
    """
    return _broadcast(model, [p.data for p in model.parameters()] + model.buffers(), "parameters", root,
                      comm)


def broadcast_buffers(model, root=0, comm=None):
    """Copy rank ``root``'s buffers to every rank, in place. With per-rank BatchNorm statistics (the
    default, as PyTorch's DDP) each rank's running statistics follow its own slices; the trainer
    broadcasts rank 0's before evaluating and saving, as DDP's ``broadcast_buffers`` leaves them."""
    return _broadcast(model, model.buffers(), "buffers", root, comm)


def _broadcast(model, arrays, what, root, comm):
    c = _get(comm)
    if c is None or c.Get_size() == 1:
        return model
    with collective(f"broadcast of the {what}", c):
        for a in arrays:
            c.Bcast(a, root=root)
    return model


_grad_buffers = weakref.WeakKeyDictionary()  # model -> the flat gradient buffer


def _flat_buffer(model, params):
    n = sum(p.grad.size for p in params)
    dt = np.result_type(*[p.grad.dtype for p in params])
    buf = _grad_buffers.get(model)
    if buf is None or buf.size != n or buf.dtype != dt:
        buf = _grad_buffers[model] = np.empty(n, dtype=dt)
    return buf


def allreduce_gradients(model, comm=None):
    """Average every parameter's ``grad`` over the ranks, in place, with one in-place ``Allreduce``
    of one preallocated contiguous buffer (the gradients packed, summed, divided by the number of
    ranks, unpacked): the global batch's mean gradient when each rank's loss is the mean over its
    equal slice. Returns the buffer's size in bytes.

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import distributed, nn
    >>> net = nn.Sequential(nn.Linear(3, 2, seed=0))
    >>> net[0].weight.grad[...] = 1.0
    >>> distributed.allreduce_gradients(net), float(net[0].weight.grad.sum())   # 8 float32 values
    (32, 6.0)
    """
    params = model.parameters()
    buf = _flat_buffer(model, params)
    c = _get(comm)
    n = c.Get_size() if c is not None else 1
    if n == 1:
        return buf.nbytes
    o = 0
    for p in params:
        k = p.grad.size
        buf[o:o + k] = p.grad.reshape(-1)
        o += k
    with collective("allreduce of the gradients", c):
        c.Allreduce(_mpi().IN_PLACE, buf, op=_mpi().SUM)
    buf /= buf.dtype.type(n)
    o = 0
    for p in params:
        k = p.grad.size
        p.grad.reshape(-1)[...] = buf[o:o + k]
        o += k
    return buf.nbytes


def allreduce_sum(values, comm=None):
    """The sum over the ranks of a float64 array (or list of numbers), one ``Allreduce``: epoch
    totals (loss, correct, seen), evaluation counts. One process: the values as float64.

    Examples
    --------
    >>> from fastact import distributed
    >>> distributed.allreduce_sum([1.5, 3])
    array([1.5, 3. ])
    """
    buf = np.array(values, dtype=np.float64)
    c = _get(comm)
    if c is not None and c.Get_size() > 1:
        with collective("allreduce of a sum", c):
            c.Allreduce(_mpi().IN_PLACE, buf, op=_mpi().SUM)
    return buf


def shard_bounds(n, comm=None):
    """(start, stop) of this rank's contiguous slice of n items: ``n * r // N`` to
    ``n * (r + 1) // N`` (equal slices when N divides n; otherwise they differ by one at most)."""
    r, k = rank(comm), size(comm)
    return n * r // k, n * (r + 1) // k


def shard(x, y=None, comm=None):
    """This rank's contiguous slice of a batch (``x``, and ``y`` when given): rank r of N takes items
    ``len * r // N`` to ``len * (r + 1) // N``, so the slices in rank order are the batch.

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import distributed
    >>> distributed.shard(np.arange(6), np.arange(6) * 10)   # one process: the whole batch
    (array([0, 1, 2, 3, 4, 5]), array([ 0, 10, 20, 30, 40, 50]))
    """
    a, b = shard_bounds(len(x), comm)
    return x[a:b] if y is None else (x[a:b], y[a:b])


def checksum(model):
    """A fingerprint of every parameter and buffer, bit for bit (SHA-256 of their bytes in
    ``state_dict`` order, 16 hex digits): equal on all ranks exactly when their states are equal.

    Examples
    --------
    >>> from fastact import distributed, nn
    >>> a, b = nn.Linear(3, 2, seed=0), nn.Linear(3, 2, seed=0)
    >>> distributed.checksum(a) == distributed.checksum(b)
    True
    >>> b.bias.data[0] += 1e-7; distributed.checksum(a) == distributed.checksum(b)
    False
    """
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()[:16]


def check_identical(model, comm=None):
    """Compare :func:`checksum` over the ranks (one ``allgather``); raise :class:`DivergenceError` on
    every rank, naming each rank's checksum, when they differ. Returns the checksum."""
    mine = checksum(model)
    c = _get(comm)
    if c is None or c.Get_size() == 1:
        return mine
    with collective("checksum of the parameters", c):
        sums = c.allgather(mine)
    if len(set(sums)) != 1:
        raise DivergenceError("the ranks' parameters diverged: " +
                              ", ".join(f"rank {i} {s}" for i, s in enumerate(sums)))
    return mine


# ------------------------------------------------------------------------------------- BatchNorm

class BatchNormSync:
    """Synchronised BatchNorm statistics over the ranks of ``comm``, for ``BatchNorm2d.sync``.

    Forward: each rank's per-channel count, mean and biased variance (:func:`fastact.batchnorm.
    channel_stats`) are gathered (one ``Allgather``) and combined in rank order on every rank (Chan et
    al.'s pairwise update: ``mean = sum n_i mean_i / n``, ``var = sum n_i (var_i + (mean_i -
    mean)^2) / n``), so all ranks normalise with the global batch's statistics, bit for bit the same.
    Backward: the per-channel ``sum dz`` and ``sum dz * (x - mean)`` and the count are summed with one
    in-place ``Allreduce``; dx uses the global sums (PyTorch's ``SyncBatchNorm``).
    """

    def __init__(self, comm=None):
        self.comm = _get(comm)

    def stats(self, x):
        from .batchnorm import channel_stats
        mean, var, count = channel_stats(x)
        c = self.comm
        if c is None or c.Get_size() == 1:
            return mean, var, count
        C = mean.size
        mine = np.empty((3, C))
        mine[0], mine[1], mine[2] = count, mean, var
        allp = np.empty((c.Get_size(), 3, C))
        with collective("allgather of the BatchNorm statistics", c):
            c.Allgather(mine, allp)
        n = allp[:, 0, 0]
        total = float(n.sum())
        if total == 0:
            return np.zeros(C), np.ones(C), 0
        gmean = (n[:, None] * allp[:, 1]).sum(axis=0) / total
        gvar = (n[:, None] * (allp[:, 2] + (allp[:, 1] - gmean) ** 2)).sum(axis=0) / total
        return gmean, gvar, int(round(total))

    def sums(self, sums, count):
        c = self.comm
        if c is None or c.Get_size() == 1:
            return sums, count
        C = sums.shape[1]
        buf = np.empty(2 * C + 1)
        buf[:2 * C] = sums.reshape(-1)
        buf[2 * C] = count
        with collective("allreduce of the BatchNorm gradient sums", c):
            c.Allreduce(_mpi().IN_PLACE, buf, op=_mpi().SUM)
        return buf[:2 * C].reshape(2, C), int(round(buf[2 * C]))


def sync_batchnorm(model, comm=None):
    """Make every :class:`fastact.nn.BatchNorm2d` of ``model`` normalise with the statistics of the
    global batch over the ranks of ``comm`` in training (PyTorch's ``SyncBatchNorm``), by setting its
    ``sync`` to a :class:`BatchNormSync`; ``comm=False`` sets them back to per-rank statistics.
    Returns the model.

    Examples
    --------
    >>> from fastact import distributed, models
    >>> net = distributed.sync_batchnorm(models.net_res_deep(4, 2))
    >>> type(net.resblocks[0].batch_norm.sync).__name__
    'BatchNormSync'
    """
    from .nn import BatchNorm2d
    sync = None if comm is False else BatchNormSync(comm)
    for m in model.modules():
        if isinstance(m, BatchNorm2d):
            m.sync = sync
    return model
