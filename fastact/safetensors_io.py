"""Weights as ``.safetensors`` files: the format PyTorch, torchvision, timm and the Hugging Face Hub share.

A ``.safetensors`` file is an 8-byte header length, a JSON header (each tensor's dtype, shape and byte
range, plus optional ``str -> str`` metadata) and the raw little-endian array data. Reading it runs
no code: there is no pickle anywhere on this path, so a file from an untrusted source is safe to load.

``save_file`` writes a model's ``state_dict()`` (or any ``{name: array}``) atomically; ``load_file``
reads one back as NumPy arrays; ``load_into`` loads a file into a module with ``load_state_dict``,
which checks every key and shape and converts dtypes to the module's. A file that PyTorch wrote with
``safetensors.torch.save_file(torch_model.state_dict(), path)`` loads into the fastact model with
the same ``state_dict`` keys. ``bfloat16`` tensors, which NumPy has no dtype for, are widened exactly
to ``float32``.

The ``safetensors`` package is imported only when a function here runs: ``pip install
"fastact[safetensors]"``.

>>> import os, tempfile
>>> from fastact import nn, safetensors_io
>>> net = nn.Sequential(nn.Conv2d(3, 4, 3, seed=0), nn.BatchNorm2d(4), nn.ReLU())
>>> path = os.path.join(tempfile.mkdtemp(), "net.safetensors")
>>> safetensors_io.save_file(net, path, metadata={"arch": "conv-bn-relu"})
>>> state = safetensors_io.load_file(path)
>>> state["1.num_batches_tracked"].dtype, state["0.weight"].shape
(dtype('int64'), (4, 3, 3, 3))
>>> other = nn.Sequential(nn.Conv2d(3, 4, 3, seed=1), nn.BatchNorm2d(4), nn.ReLU())
>>> other = safetensors_io.load_into(other, path)
>>> bool((other.state_dict()["0.weight"] == net.state_dict()["0.weight"]).all())
True
>>> safetensors_io.load_metadata(path)
{'arch': 'conv-bn-relu'}
"""

import json
import os
import struct
from collections.abc import Mapping

import numpy as np

from . import checkpoint

__all__ = ["save_file", "load_file", "load_into", "load_metadata"]

_INSTALL = 'fastact.safetensors_io needs the safetensors package: pip install "fastact[safetensors]"'

#: the NumPy dtypes the format stores (kinds b, i, u, f; no float128, complex or objects)
_SAVABLE = frozenset(np.dtype(t) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
                                           np.uint16, np.uint32, np.uint64, np.float16, np.float32,
                                           np.float64))

#: the format's dtype names that NumPy reads directly
_NUMPY_DTYPES = {"BOOL": "?", "U8": "<u1", "I8": "<i1", "U16": "<u2", "I16": "<i2", "F16": "<f2",
                 "U32": "<u4", "I32": "<i4", "F32": "<f4", "U64": "<u8", "I64": "<i8", "F64": "<f8"}


def _safetensors():
    """(safetensors, safetensors.numpy), or ImportError saying how to install them."""
    try:
        import safetensors
        import safetensors.numpy
    except ImportError as exc:
        raise ImportError(_INSTALL) from exc
    return safetensors, safetensors.numpy


def _arrays(state_dict):
    """{key: C-contiguous copy} of a state dict or of a module's ``state_dict()``, checked."""
    if not isinstance(state_dict, Mapping) and callable(getattr(state_dict, "state_dict", None)):
        state_dict = state_dict.state_dict()
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"save_file: expected a dict of arrays or a module with .state_dict(), got "
                        f"{type(state_dict).__name__}")
    out = {}
    for k, v in state_dict.items():
        if not isinstance(k, str):
            raise TypeError(f"save_file: key {k!r} is a {type(k).__name__}, not a str")
        a = np.asarray(v)
        native = a.dtype.newbyteorder("=")
        if native not in _SAVABLE:
            raise TypeError(f"save_file: {k} has dtype {a.dtype}; safetensors stores bool, int8-64, "
                            f"uint8-64 and float16/32/64 arrays")
        out[k] = np.array(a, dtype=native, order="C", copy=True)
    return out


def save_file(state_dict, path, metadata=None):
    """Write ``state_dict`` (a ``{str: array}`` dict, or a module whose ``state_dict()`` is taken) to
    ``path`` as a ``.safetensors`` file, atomically (:func:`fastact.checkpoint.atomic_write`).

    Every array is stored as a C-contiguous copy with its dtype (``num_batches_tracked`` stays int64,
    0-d arrays stay 0-d). ``metadata``: an optional ``{str: str}`` dict stored in the header
    (``load_metadata`` reads it back).

    Raises
    ------
    TypeError
        For an array of a dtype the format lacks (strings, objects, complex), naming its key; for a
        non-str key; for metadata that is not a ``{str: str}`` dict. Nothing is written then.
    ImportError
        When the ``safetensors`` package is missing.

    >>> import os, tempfile, numpy as np
    >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> save_file({"w": np.eye(2, dtype=np.float32)}, p)
    >>> load_file(p)["w"]
    array([[1., 0.],
           [0., 1.]], dtype=float32)
    """
    _, stnp = _safetensors()
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("save_file: metadata must be a dict of str to str")
        metadata = dict(metadata)
    data = stnp.save(_arrays(state_dict), metadata=metadata)
    checkpoint.atomic_write(os.fspath(path), lambda fh: fh.write(data))


def _check_path(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such safetensors file")
    return path


def _read_raw(path, safetensors, dtypes):
    """load_file for a file holding bfloat16 tensors, which NumPy lacks: widened to float32.
    ``safe_open`` has validated the header (offsets in range, the data fully covered) before this
    reads their byte ranges itself."""
    with safetensors.safe_open(path, framework="np") as f:
        out = {k: f.get_tensor(k) for k, dt in dtypes.items() if dt != "BF16"}
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
        for k, dt in dtypes.items():
            if dt == "BF16":
                start, stop = header[k]["data_offsets"]
                fh.seek(8 + n + start)
                bits = np.frombuffer(fh.read(stop - start), dtype="<u2").astype(np.uint32) << 16
                out[k] = bits.view(np.float32).reshape(header[k]["shape"])
    return out


def load_file(path):
    """The arrays of a ``.safetensors`` file, ``{key: ndarray}`` in sorted key order, read without
    pickle. Dtypes are the file's, except ``bfloat16``, which NumPy lacks: it is widened exactly to
    ``float32`` (the bits shifted into the upper half).

    Raises
    ------
    FileNotFoundError
        For a path that is not a file.
    ValueError
        For a corrupt, truncated or non-safetensors file, or a tensor of a dtype fastact does not read
        (the 8-bit floats); the message names the path.
    ImportError
        When the ``safetensors`` package is missing.
    """
    safetensors, stnp = _safetensors()
    path = _check_path(path)
    try:
        with safetensors.safe_open(path, framework="np") as f:  # the header only, validated
            dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
        for k, dt in dtypes.items():
            if dt != "BF16" and dt not in _NUMPY_DTYPES:
                raise ValueError(f"{path}: {k} has dtype {dt}, which fastact does not read "
                                 f"(it reads {', '.join(_NUMPY_DTYPES)} and BF16)")
        if "BF16" in dtypes.values():
            state = _read_raw(path, safetensors, dtypes)
        else:
            state = stnp.load_file(path)
    except safetensors.SafetensorError as exc:
        raise ValueError(f"{path}: not a valid safetensors file ({exc})") from None
    except (json.JSONDecodeError, struct.error, KeyError) as exc:
        raise ValueError(f"{path}: not a valid safetensors file ({exc})") from None
    return {k: state[k] for k in sorted(state)}


def load_metadata(path):
    """The ``{str: str}`` metadata of a ``.safetensors`` file's header, keys sorted (``{}`` when none).

    Raises FileNotFoundError, ValueError and ImportError as ``load_file`` does."""
    safetensors, _ = _safetensors()
    path = _check_path(path)
    try:
        with safetensors.safe_open(path, framework="np") as f:
            return dict(sorted((f.metadata() or {}).items()))
    except safetensors.SafetensorError as exc:
        raise ValueError(f"{path}: not a valid safetensors file ({exc})") from None


def load_into(module, path, strict=True):
    """``module.load_state_dict(load_file(path), strict=strict)``; returns ``module``.

    With ``strict=True`` a missing or unexpected key raises ValueError naming each one; a shape that
    differs raises ValueError naming the key and both shapes, whatever ``strict``; dtypes are
    converted to the module's (a float64 or float16 file into a float32 model). Nothing is written
    into the module unless every check passes.
    """
    module.load_state_dict(load_file(path), strict=strict)
    return module
