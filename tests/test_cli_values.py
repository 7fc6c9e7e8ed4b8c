"""The command line honours or refuses every value it is given, and training stops loudly when it
diverges (a NaN or infinite loss) instead of printing "loss nan" to the end."""

import argparse

import numpy as np
import pytest

from fastact import data, nn, train
from fastact.__main__ import main


@pytest.mark.parametrize("command", ["train", "warmup"])
@pytest.mark.parametrize("flag, value", [("--epochs", "0"), ("--epochs", "-1"), ("--batch-size", "0"),
                                         ("--lr", "0"), ("--lr", "-0.1"), ("--lr", "nan"), ("--lr", "inf"),
                                         ("--momentum", "5"), ("--momentum", "-0.1"), ("--momentum", "nan"),
                                         ("--limit", "0"), ("--limit", "-5"), ("--n-chans1", "0")])
def test_out_of_range_values_are_refused_naming_the_flag(command, flag, value, capsys, tmp_path):
    code = main([command, flag, value, "--plot", str(tmp_path / "c.png")])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and value in err, err


def _args(*argv):
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    return p.parse_args(list(argv))


def test_given_values_are_used_not_replaced_by_defaults():
    cfg = train.config_from_args(_args("--epochs", "1", "--batch-size", "7", "--lr", "0.5", "--momentum", "0"))
    assert (cfg["epochs"], cfg["batch_size"], cfg["lr"], cfg["momentum"]) == (1, 7, 0.5, 0.0)
    cfg = train.config_from_args(_args())
    assert (cfg["epochs"], cfg["batch_size"], cfg["lr"]) == (12, 32, 2e-3)


def test_help_texts_say_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "warmup" in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--batch-size", "--lr", "--seed", "--dtype", "--keep-going"):
        assert flag in out
    assert "digits 32" in out and "digits 0.002" in out and "(default 0)" in out


def _job():
    """(cfg, model, optimizer, x, y): 64 digits in batches of 16."""
    args = _args("--limit", "64", "--batch-size", "16")
    cfg = train.config_from_args(args)
    model, opt = train.build(cfg)
    x, y, _, _ = train.load_data(cfg, args)
    return cfg, model, opt, x.copy(), y


def test_a_nan_loss_stops_training_before_the_step_and_names_the_cause():
    cfg, model, opt, x, y = _job()
    x[40, 0, 3, 3] = np.nan  # one NaN pixel: its batch (not the first of the shuffled order) diverges
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(train.TrainingDiverged, match=r"at epoch 1, step \d+ of 4: .*1 NaN or infinite value"):
        train.train_epoch(model, opt, nn.CrossEntropyLoss(), x, y, cfg, 1)
    after = model.state_dict()
    assert all(np.isfinite(v).all() for v in after.values())  # the diverging step changed nothing
    assert any(not np.array_equal(before[k], after[k]) for k in before)  # the earlier steps did train
    cfg, model, opt, _, y = _job()
    train.train_epoch(model, opt, nn.CrossEntropyLoss(), x, y, cfg, 1, keep_going=True)  # no raise


def test_cli_diverging_run_exits_nonzero(capsys, tmp_path):
    code = main(["train", "--optimizer", "sgd", "--lr", "1e30", "--limit", "64", "--epochs", "2", "--quiet",
                 "--plot", str(tmp_path / "c.png")])
    err = capsys.readouterr().err
    assert code == 1 and "at epoch 1, step" in err and "lr 1e+30" in err and "--keep-going" in err, err


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_batches_refuses_a_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        list(data.batches(np.zeros((4, 1)), np.zeros(4), bad))


def test_activation_by_name():
    assert type(nn.Activation("gelu")) is nn.GELU
    assert nn.Activation("gelu", approximate="tanh").params == nn.GELU(approximate="tanh").params
    with pytest.raises(ValueError, match="unknown activation 'relu7'"):
        nn.Activation("relu7")
    with pytest.raises(TypeError, match="activation's name first"):
        nn.Activation()


def test_resume_takes_the_run_from_the_checkpoint(tmp_path, monkeypatch, capsys):
    """--resume needs no option repeated; --epochs and --lr may change, other options only repeat the
    run's; a finished run says so."""
    from fastact import checkpoint
    monkeypatch.chdir(tmp_path)
    common = ["--limit", "64", "--quiet"]
    assert main(["train", *common, "--activation", "gelu", "--batch-size", "16", "--epochs", "1",
                 "--checkpoint", "ck.npz"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "ck.npz", "--epochs", "2", "--lr", "0.001", "--checkpoint", "ck.npz",
                 *common]) == 0
    out = capsys.readouterr().out
    assert "gelu" in out and "batch 16" in out and "lr=0.001" in out and "epoch 2:" in out
    header = checkpoint.read_header("ck.npz")[0]
    assert [h["epoch"] for h in header["history"]] == [1, 2] and header["config"]["lr"] == 0.001
    assert main(["train", "--resume", "ck.npz", "--activation", "relu", "--epochs", "3", *common]) == 2
    err = capsys.readouterr().err
    assert "activation 'gelu' (now 'relu')" in err and "--resume continues that run" in err
    assert main(["train", "--resume", "ck.npz", "--activation", "gelu", "--batch-size", "16", *common]) == 0
    assert "finished its 2 epochs" in capsys.readouterr().out


def test_reference_nets_train_offline_on_the_digits(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", "net_res_deep", "--dataset", "digits", "--n-chans1", "4", "--n-blocks",
                 "1", "--limit", "40", "--epochs", "1", "--batch-size", "20", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "digits (40 train" in out and "net_res_deep(n_chans1=4, n_blocks=1)" in out
    x = data.load_digits(rgb32=True)[0]
    assert x.shape[1:] == (3, 32, 32) and np.array_equal(x[:, 0, ::4, ::4], data.load_digits()[0][:, 0])


@pytest.mark.parametrize("dataset, name", [("mnist", "train-images-idx3-ubyte"), ("cifar10", "data_batch_1")])
def test_data_errors_say_where_the_files_come_from(dataset, name, tmp_path, capsys):
    assert main(["train", "--dataset", dataset]) == 2  # no --data-dir
    err = capsys.readouterr().err
    assert "--data-dir" in err and name in err
    loader = {"mnist": data.load_mnist, "cifar10": data.load_cifar10}[dataset]
    with pytest.raises(data.DataError) as exc:
        loader(None)
    assert "--" not in str(exc.value) and name in str(exc.value)  # Python's errors name no CLI flag
    with pytest.raises(data.DataError, match=f"missing file.*{dataset} reads"):
        loader(str(tmp_path))


def test_info_and_cuda_status_agree_in_words():
    """`python -m fastact info` gives fastact.cuda's own answer, as words (no exception class names)."""
    import re

    from fastact import cuda, system
    ok, why = cuda.status()
    line = system.info()["CUDA"]
    assert ok == cuda.is_available() and line.startswith("available" if ok else "not available")
    assert why in line and not re.search(r"\b[A-Z][a-z]+(Error|Exception)\b", line)
    if not ok:
        assert "pip install 'fastact[cuda]'" in why or "no NVIDIA GPU" in why or "driver" in why


def test_getting_started_lists_the_table_as_it_is():
    import pathlib
    import re

    import fastact as fa
    text = (pathlib.Path(__file__).parent.parent / "docs" / "getting-started.md").read_text()
    listed = text.split("The activations of the table, `fa.ACTIVATIONS`:", 1)[1].split(" (and ", 1)[0]
    assert tuple(re.findall(r"`(\w+)`", listed)) == fa.ACTIVATIONS


def test_dead_units_are_those_without_gradient():
    """A ReLU6 unit stuck above 6 is dead as surely as one below 0; a GELU unit never is, and gets no
    report."""
    from fastact import models
    lin = nn.Linear(2, 3)
    lin.weight.data[:] = [[1.0, 0.0], [-1.0, 0.0], [100.0, 0.0]]  # unit 0 alive, 1 below 0, 2 above 6
    lin.bias.data[:] = 0.0
    net = nn.Sequential(lin, nn.ReLU6())
    net.train()
    net.activity = {}
    net(np.array([[0.5, 0.0], [1.0, 1.0]]))
    assert net.activity[1].tolist() == [True, False, False]
    assert nn.can_die(nn.ReLU6()) and not nn.can_die(nn.GELU()) and not nn.can_die(nn.PReLU())
    gelu = models.vgg([4, "M"], in_channels=1, num_classes=3, input_size=4, hidden=(), activation="gelu")
    gelu.train()
    gelu.activity = {}
    gelu(np.ones((2, 1, 4, 4), np.float32))
    assert gelu.activity == {}


def test_cli_dead_unit_report_says_what_it_measures(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--limit", "64", "--epochs", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "dead units (zero gradient for every training image): layer 1 (ReLU)" in out
    assert main(["train", "--limit", "64", "--epochs", "1", "--quiet", "--activation", "silu"]) == 0
    out = capsys.readouterr().out
    assert "no dead-unit report: the gradient of silu is never zero" in out and "dead units (" not in out


def test_warmup_for_a_resumed_run_takes_its_configuration(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--limit", "64", "--epochs", "1", "--quiet", "--activation", "elu",
                 "--checkpoint", "ck.npz"]) == 0
    capsys.readouterr()
    assert main(["warmup", "--resume", "ck.npz", "--limit", "64"]) == 0
    assert capsys.readouterr().out.startswith("fastact warmup: 0 kernels compiled")  # elu's, as trained
    assert main(["warmup", "--resume", "ck.npz", "--activation", "relu"]) == 2  # the run's, not a new one
    assert "activation 'elu' (now 'relu')" in capsys.readouterr().err
