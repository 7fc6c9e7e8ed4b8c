"""fastact.safetensors_io: weights to and from .safetensors files, PyTorch's files included."""

import json
import os
import struct
import sys

import numpy as np
import pytest

safetensors = pytest.importorskip("safetensors")

from conftest import torch_or_skip  # noqa: E402
from fastact import models, nn, safetensors_io  # noqa: E402
from fastact.safetensors_io import load_file, load_into, load_metadata, save_file  # noqa: E402


def small(seed=0):
    return nn.Sequential(nn.Conv2d(3, 4, 3, seed=seed), nn.BatchNorm2d(4), nn.ReLU())


def trained(net, shape, steps=2):
    """``net`` with running statistics and num_batches_tracked moved off their initial values."""
    rng = np.random.default_rng(1)
    net.train()
    for _ in range(steps):
        net(rng.standard_normal(shape).astype(np.float32))
    return net


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


@pytest.mark.parametrize("build, shape", [(small, (2, 3, 8, 8)),
                                          (lambda seed=0: models.net_res_deep(n_blocks=2, seed=seed),
                                           (2, 3, 32, 32))], ids=["conv-bn-relu", "net_res_deep"])
def test_round_trip_into_a_new_model(tmp_path, build, shape):
    net = trained(build(0), shape)
    path = tmp_path / "w.safetensors"
    save_file(net, path)
    state = load_file(path)
    assert sorted(state) == sorted(net.state_dict())
    for k, v in net.state_dict().items():
        assert state[k].dtype == v.dtype and state[k].shape == v.shape, k
        np.testing.assert_array_equal(state[k], v)
    nbt = [k for k in state if k.endswith("num_batches_tracked")]
    assert nbt and all(state[k].dtype == np.int64 and state[k].shape == () and state[k] == 2 for k in nbt)
    other = build(1)
    assert load_into(other, path) is other
    assert_same_state(net, other)
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(net.eval()(x), other.eval()(x))


def test_a_state_dict_and_odd_arrays(tmp_path):
    path = tmp_path / "d.safetensors"
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    state = {"t": base.T, "s": base[:, ::2], "be": base.astype(">f4"), "z": np.array(7, np.int64),
             "b": np.array([True, False]), "h": base.astype(np.float16), "u": np.arange(3, dtype=np.uint8)}
    save_file(state, path)
    got = load_file(path)
    assert list(got) == sorted(state)
    for k, v in state.items():
        assert got[k].dtype == v.dtype.newbyteorder("="), k
        np.testing.assert_array_equal(got[k], v)


def test_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(small(), path, metadata={"arch": "conv-bn-relu", "epochs": "3"})
    assert load_metadata(path) == {"arch": "conv-bn-relu", "epochs": "3"}
    save_file(small(), path)
    assert load_metadata(path) == {}
    for bad in ({"epochs": 3}, {1: "x"}, ["a"]):
        with pytest.raises(TypeError, match="metadata"):
            save_file(small(), path, metadata=bad)


def test_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_file(small(0), path)
    before = path.read_bytes()
    with pytest.raises(TypeError, match="names"):  # a non-numeric array: refused before any write
        save_file({"w": np.zeros(2, np.float32), "names": np.array(["a", "b"])}, path)
    with pytest.raises(TypeError, match="obj"):
        save_file({"obj": np.array([None, 1], dtype=object)}, path)
    with pytest.raises(TypeError, match="cplx"):
        save_file({"cplx": np.zeros(2, np.complex64)}, path)
    with pytest.raises(TypeError, match="not a str"):
        save_file({3: np.zeros(2)}, path)
    with pytest.raises(TypeError, match="state_dict"):
        save_file([np.zeros(2)], path)

    def fail(*args):
        raise OSError("disk full")
    monkeypatch.setattr(safetensors_io.os, "replace", fail)  # fails after the temporary is written
    with pytest.raises(OSError, match="disk full"):
        save_file(small(1), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.safetensors"]
    save_file(small(1), path)  # a new file replaces the old one
    assert path.read_bytes() != before and os.listdir(tmp_path) == ["w.safetensors"]
    assert_same_state(load_into(small(5), path), small(1))


def test_strict_errors_name_every_key(tmp_path):
    path = tmp_path / "w.safetensors"
    state = small().state_dict()
    del state["1.running_var"], state["0.bias"]
    state["extra.weight"] = np.zeros(2, np.float32)
    save_file(state, path)
    net = small(3)
    before = net.state_dict()
    with pytest.raises(ValueError) as err:
        load_into(net, path)
    msg = str(err.value)
    for k in ("1.running_var", "0.bias", "extra.weight"):
        assert k in msg
    assert "missing keys" in msg and "unexpected keys" in msg
    assert_same_state(net, small(3))  # nothing written
    load_into(net, path, strict=False)  # the rest loads
    np.testing.assert_array_equal(net.state_dict()["0.weight"], state["0.weight"])
    np.testing.assert_array_equal(net.state_dict()["0.bias"], before["0.bias"])

    save_file({k: v for k, v in small().state_dict().items() if k != "0.weight"}, path)
    with pytest.raises(ValueError, match=r"missing keys \['0.weight'\]") as err:
        load_into(small(), path)
    assert "unexpected" not in str(err.value)


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    path = tmp_path / "w.safetensors"
    state = small().state_dict()
    state["0.weight"] = np.zeros((4, 3, 5, 5), np.float32)
    save_file(state, path)
    for strict in (True, False):
        with pytest.raises(ValueError, match=r"0\.weight has shape \(4, 3, 5, 5\).*\(4, 3, 3, 3\)"):
            load_into(small(), path, strict=strict)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_a_file_of_another_float_type_is_converted(tmp_path, dtype):
    path = tmp_path / "w.safetensors"
    net = trained(small(0), (2, 3, 8, 8))
    save_file({k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in net.state_dict().items()}, path)
    assert load_file(path)["0.weight"].dtype == dtype
    other = load_into(small(1), path)
    for k, v in other.state_dict().items():
        assert v.dtype == net.state_dict()[k].dtype, k  # the model's dtypes stay
        np.testing.assert_array_equal(v, net.state_dict()[k].astype(dtype).astype(v.dtype), err_msg=k)


def test_bfloat16_is_widened_to_float32(tmp_path):
    torch = torch_or_skip()
    import safetensors.torch
    path = tmp_path / "bf16.safetensors"
    w = torch.randn(3, 4).to(torch.bfloat16)
    safetensors.torch.save_file({"w": w, "n": torch.tensor(5), "f": torch.ones(2)}, str(path))
    got = load_file(path)
    assert got["w"].dtype == np.float32 and got["w"].shape == (3, 4)
    np.testing.assert_array_equal(got["w"], w.float().numpy())
    assert got["n"].dtype == np.int64 and got["n"] == 5 and got["f"].dtype == np.float32


def test_bfloat16_written_by_hand(tmp_path):
    """The same without PyTorch: a BF16 tensor is the upper 16 bits of a float32."""
    x = np.array([[1.0, -2.5], [3.140625, 1e-3]], np.float32)
    bits = (x.view(np.uint32) >> 16).astype("<u2")
    path = tmp_path / "bf16.safetensors"
    header = json.dumps({"b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [8, 16]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + np.ones(2, "<f4").tobytes() + bits.tobytes())
    got = load_file(path)
    np.testing.assert_array_equal(got["w"], (bits.astype(np.uint32) << 16).view(np.float32))
    np.testing.assert_array_equal(got["b"], np.ones(2, np.float32))



def test_an_8_bit_float_is_refused_by_name(tmp_path):
    header = json.dumps({"q": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}).encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / "f8.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    with pytest.raises(ValueError, match="q has dtype F8_E4M3"):
        load_file(path)

def test_a_file_written_by_pytorch_loads_and_runs_the_same(tmp_path):
    torch = torch_or_skip()
    import safetensors.torch
    net = trained(models.net_res_deep(n_blocks=2, seed=0), (2, 3, 32, 32))
    tnet = models.to_torch(net)
    with torch.no_grad():  # weights fastact never saw
        for p in tnet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "torch.safetensors"
    tstate = tnet.state_dict()
    safetensors.torch.save_file(tstate, str(path))
    nbt = "resblocks.0.batch_norm.num_batches_tracked"
    assert tstate[nbt].shape == () and load_file(path)[nbt].shape == ()
    fresh = load_into(models.net_res_deep(n_blocks=2, seed=7), path)
    for k, v in fresh.state_dict().items():
        np.testing.assert_array_equal(v, tstate[k].numpy(), err_msg=k)
        assert v.dtype == tstate[k].numpy().dtype, k
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    fresh.eval()
    tnet.eval()
    with torch.no_grad():
        want = tnet(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(fresh(x), want, rtol=1e-4, atol=1e-5)

    # and the other way: a fastact file into the PyTorch model
    save_file(net, path)
    tnet.load_state_dict(safetensors.torch.load_file(str(path)))
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(tnet.state_dict()[k].numpy(), v, err_msg=k)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "header"])
def test_a_corrupt_file_gives_a_clean_error(tmp_path, damage):
    path = tmp_path / "bad.safetensors"
    save_file(small(), path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:-5], "garbage": b"not a safetensors file at all",
                      "empty": b"", "header": data[:8] + b"[" + data[9:]}[damage])
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_file(path)
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_into(small(), path)


def test_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_file(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_metadata(tmp_path / "nope.safetensors")


def test_missing_package_says_what_to_install(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "safetensors" or m.startswith("safetensors.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    for call in (lambda: save_file(small(), tmp_path / "w.safetensors"),
                 lambda: load_file(tmp_path / "w.safetensors"),
                 lambda: load_into(small(), tmp_path / "w.safetensors"),
                 lambda: load_metadata(tmp_path / "w.safetensors")):
        with pytest.raises(ImportError, match=r'pip install "fastact\[safetensors\]"'):
            call()
    assert not os.listdir(tmp_path)


def test_import_fastact_does_not_need_safetensors():
    import subprocess
    code = ("import sys; sys.modules['safetensors'] = None; import fastact; "
            "from fastact import safetensors_io; print(fastact.safetensors_io is safetensors_io)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True"
