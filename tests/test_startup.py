"""Start-up: what ``import fastact`` does (nothing compiled or imported that was not asked for), the
warm-up that compiles a training job's kernels ahead of its first step, and the helper threads that
run the convolution's slot kernels."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastact as fa
from numba import njit

from fastact import jit as fj
from fastact import models, nn, optim, warmup


def _python(code, env=None, timeout=600):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_compiles_nothing_and_leaves_scipy_blas_alone(tmp_path):
    out = _python(
        "from numba.core import event\n"
        "seen = []\n"
        "class L(event.Listener):\n"
        "    def on_start(self, ev): seen.append(ev.data['dispatcher'])\n"
        "    def on_end(self, ev): pass\n"
        "event.register('numba:compile', L())\n"
        "import sys, fastact\n"
        "print(len(seen), 'scipy.linalg' in sys.modules, 'scipy.special' in sys.modules)\n",
        env={"FASTACT_CACHE_DIR": str(tmp_path)})  # an empty cache: anything compiled would show
    assert out.split() == ["0", "False", "False"]


def test_digits_load_without_scikit_learn_import_and_match_its_loader():
    out = _python("import sys; from fastact import data; x = data.load_digits(); "
                  "print('sklearn' in sys.modules, len(x[1]) + len(x[3]))")
    assert out.split() == ["False", "1797"]
    from sklearn.datasets import load_digits

    from fastact import data
    d = load_digits()
    images, target = data.read_digits()
    assert np.array_equal(images, d.images) and np.array_equal(target, d.target)


def _job():
    net = models.vgg([4, "M"], in_channels=1, num_classes=3, input_size=4, hidden=(), seed=0)
    return net, optim.SGD(net.parameters(), lr=0.1), nn.CrossEntropyLoss()


def test_warm_up_compiles_then_finds_everything_compiled():
    first = warmup.warm_up(_job, (1, 4, 4), train_batches=[5, 2], eval_batches=[3], num_classes=3)
    again = warmup.warm_up(_job, (1, 4, 4), train_batches=[5, 2], eval_batches=[3], num_classes=3)
    assert again.kernels == 0, again.per_kernel
    assert first.kernels == len(first.per_kernel)
    assert again.summary().startswith("0 kernels compiled in ")


def test_warm_up_leaves_the_job_as_it_would_have_run():
    """A run after a warm-up gives the same bits as one without (the warm-up trains a throwaway copy)."""
    def train(warm):
        if warm:
            warmup.warm_up(_job, (1, 4, 4), train_batches=[6], eval_batches=[6], num_classes=3)
        net, opt, loss_fn = _job()
        x = np.random.default_rng(1).standard_normal((6, 1, 4, 4)).astype(np.float32)
        y = np.array([0, 1, 2, 0, 1, 2])
        for _ in range(3):
            loss_fn(net(x), y)
            opt.zero_grad()
            net.backward(loss_fn.backward())
            opt.step()
        return [p.copy() for p in net.state_dict().values()]
    for a, b in zip(train(False), train(True)):
        assert np.array_equal(a, b)


def test_warm_up_notice_only_when_compiling():
    said = []
    warmup.warm_up(_job, (1, 4, 4), train_batches=[2], eval_batches=[2], num_classes=3)
    warmup.warm_up(_job, (1, 4, 4), train_batches=[2], eval_batches=[2], num_classes=3, notice=said.append)
    assert not said  # everything compiled already: nothing to announce


def test_compile_counter_announces_the_first_compilation():
    from numba import njit as _njit

    @_njit
    def fresh(v):  # a new function: its first call compiles
        return v + 1
    firsts = []
    with warmup.compile_counter(firsts.append) as counter:
        fresh(1.0)
        fresh(2.0)
        fresh(3)
    assert firsts == ["fresh"] and counter.count == 2 and counter.events[0][1] == "fresh"


@pytest.mark.parametrize("n, batch, sizes", [(0, 32, []), (10, 32, [10]), (64, 32, [32]),
                                             (70, 32, [32, 6])])
def test_batch_sizes(n, batch, sizes):
    assert warmup.batch_sizes(n, batch) == sizes


# ---------------------------------------------------------------------------------------- run_slots

@njit(nogil=True)
def _fill_slots(counter, nslots, out, fail):
    # out[sl] = sl + 1 for every slot taken; slot `fail` raises
    sl = fj.next_slot(counter)
    while sl < nslots:
        if sl == fail:
            raise ValueError("slot failed")
        out[sl] += sl + 1
        sl = fj.next_slot(counter)


@pytest.mark.parametrize("parallel", [False, True])
def test_run_slots_runs_every_slot_once(parallel):
    out = np.zeros(37, dtype=np.int64)
    fj.run_slots(_fill_slots, 37, (out, -1), parallel)
    assert np.array_equal(out, np.arange(1, 38))


def test_run_slots_raises_a_helpers_error_and_recovers():
    out = np.zeros(8, dtype=np.int64)
    for fail in range(8):  # whichever thread takes the failing slot
        with pytest.raises(ValueError, match="slot failed"):
            fj.run_slots(_fill_slots, 8, (out, fail), True)
    out[:] = 0
    fj.run_slots(_fill_slots, 8, (out, -1), True)  # every helper is back and idle
    assert np.array_equal(out, np.arange(1, 9))


def test_conv_from_many_threads_matches_one_thread():
    """Python threads calling the convolution at once share the helpers (a caller that finds them busy
    runs its slots itself): every result is the single-threaded one, bit for bit."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 8, 16, 16)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    want_y, want_z = fa.conv2d(x, w, b, padding=1, activation="relu", return_preactivation=True)
    dy = rng.standard_normal(want_y.shape).astype(np.float32)
    want = fa.conv2d_backward(dy, x, w, padding=1, preactivation=want_z, activation="relu")
    errors = []

    def worker():
        try:
            for _ in range(5):
                y = fa.conv2d(x, w, b, padding=1, activation="relu")
                got = fa.conv2d_backward(dy, x, w, padding=1, preactivation=want_z, activation="relu")
                assert np.array_equal(y, want_y)
                assert all(np.array_equal(g, v) for g, v in zip(got, want))
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_conv_serial_and_threaded_give_the_same_bits(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 16, 8, 8)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((64, 32, 8, 8)).astype(np.float32)
    threaded = fa.conv2d(x, w, padding=1), fa.conv2d_backward(dy, x, w, padding=1)
    monkeypatch.setattr(fa.config, "CONV_PARALLEL_MIN_FLOPS", 10 ** 15)
    serial = fa.conv2d(x, w, padding=1), fa.conv2d_backward(dy, x, w, padding=1)
    assert np.array_equal(threaded[0], serial[0])
    assert all(np.array_equal(a, b) for a, b in zip(threaded[1], serial[1]))


# ------------------------------------------------------------------------------------------ the CLI

def test_cli_cold_train_says_it_compiles_then_warmup_finds_it_done(tmp_path):
    """A first ``train`` on an empty cache says that it compiles, where the cache is and how long it
    took, before its first epoch; ``python -m fastact warmup`` for the same run then compiles nothing."""
    cache = tmp_path / "cache"
    args = ["--limit", "70", "--epochs", "1", "--quiet", "--plot", str(tmp_path / "curves.png")]
    run = "import sys; from fastact.__main__ import main; sys.exit(main(%r))"
    out = _python(run % (["train"] + args), env={"FASTACT_CACHE_DIR": str(cache)})
    lines = out.splitlines()
    notice = [i for i, line in enumerate(lines) if "compiling kernels for this CPU (first run only; cached in "
              + str(cache) in line]
    done = [i for i, line in enumerate(lines) if "kernels compiled in" in line]
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch 1:"))
    assert notice and done and notice[0] < done[0] < first_epoch, out
    out = _python(run % (["warmup"] + args[:4]), env={"FASTACT_CACHE_DIR": str(cache)})
    assert out.startswith("fastact warmup: 0 kernels compiled in "), out


def test_train_compiles_nothing_after_its_warm_up():
    """The warm-up covers every kernel of a training run: its epochs and evaluation compile nothing."""
    import argparse

    from fastact import train
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    args = p.parse_args(["--limit", "70", "--batch-size", "32"])
    cfg = train.config_from_args(args)
    xtr, ytr, xte, yte = train.load_data(cfg, args)
    train.warm_up(cfg, len(ytr), len(yte))
    model, opt = train.build(cfg)
    with warmup.compile_counter() as counter:
        train.train_epoch(model, opt, nn.CrossEntropyLoss(), xtr, ytr, cfg, 1)
        train.evaluate(model, xte, yte)
    assert counter.count == 0, counter.events
