"""Training checkpoints: one ``.npz`` (a zip of ``.npy`` arrays), written atomically, read without pickle.

Layout: ``format_version`` (int64), ``header`` (the JSON of the run's config, epoch and history as
uint8 bytes), ``model/<state_dict key>`` and ``optim/<key>`` arrays. The model's entries are its whole
``state_dict()``, buffers included (BatchNorm's running statistics, and ``num_batches_tracked``, which
keeps its int64 dtype), so a resumed run continues exactly.

Writing goes to a temporary file in the same directory, is fsync'ed and then renamed over the target,
so a crash at any point leaves either the old checkpoint or the new one, never a torn file.
Reading checks everything it can from the zip directory and the ``.npy`` headers before it reads any
array data: the format version, no object arrays, each array's declared size against the stored size,
and (through ``expect``) the keys and shapes the model needs. Anything off raises ``CheckpointError``
with one line saying what.
"""

import json
import os
import tempfile
import zipfile

import numpy as np

__all__ = ["CheckpointError", "save", "load", "read_header", "atomic_write", "FORMAT_VERSION"]

FORMAT_VERSION = 1


class CheckpointError(Exception):
    """The checkpoint is missing, corrupt, truncated, of another format or for another model."""


def atomic_write(path, write):
    """Create or replace the file ``path`` atomically: ``write(fh)`` fills a temporary file (binary) in
    the same directory, which is flushed, fsync'ed and renamed over ``path`` (``os.replace``), then the
    directory is fsync'ed. A failure at any point leaves the old file (or none) and no temporary file.
    Checkpoints, safetensors files (:mod:`fastact.safetensors_io`) and the study's outputs are written
    this way.

    >>> import os, tempfile
    >>> from fastact import checkpoint
    >>> p = os.path.join(tempfile.mkdtemp(), "x.bin")
    >>> checkpoint.atomic_write(p, lambda fh: fh.write(b"abc"))
    >>> open(p, "rb").read(), os.listdir(os.path.dirname(p))
    (b'abc', ['x.bin'])
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some file systems refuse fsync on directories; the rename is still atomic
        pass


def save(path, header, model_state, optim_state):
    """Write the checkpoint atomically (:func:`atomic_write`)."""
    arrays = {"format_version": np.array(FORMAT_VERSION, dtype=np.int64),
              "header": np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8)}
    arrays.update({f"model/{k}": np.asarray(v) for k, v in model_state.items()})
    arrays.update({f"optim/{k}": np.asarray(v) for k, v in optim_state.items()})
    # a file object: np.savez would append ".npz" to a name
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def _member_headers(zf, path):
    """{name: (shape, dtype)} for every .npy member, from headers only, checked against stored sizes."""
    out = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            raise CheckpointError(f"{path}: unexpected member {info.filename!r}")
        with zf.open(info) as fh:
            try:
                version = np.lib.format.read_magic(fh)
                reader = {(1, 0): np.lib.format.read_array_header_1_0,
                          (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if reader is None:
                    raise ValueError(f"npy format version {version}")
                shape, fortran, dtype = reader(fh)
                header_len = fh.tell()
            except (ValueError, EOFError, OSError, zipfile.BadZipFile) as exc:
                raise CheckpointError(f"{path}: member {info.filename} is corrupt ({exc})") from None
        if dtype.hasobject:
            raise CheckpointError(f"{path}: member {info.filename} holds Python objects; refusing to load")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes != info.file_size - header_len:
            raise CheckpointError(f"{path}: member {info.filename} declares {shape} {dtype} "
                                  f"({nbytes} bytes) but stores {info.file_size - header_len} bytes")
        out[info.filename[:-4]] = (tuple(shape), dtype)
    return out


def read_header(path):
    """(header dict, {name: (shape, dtype)}) of a checkpoint, reading no array data but the header."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with zipfile.ZipFile(path) as zf:
            members = _member_headers(zf, path)
            for key in ("format_version", "header"):
                if key not in members:
                    raise CheckpointError(f"{path}: not a fastact checkpoint (no {key})")
            if members["header"][0][0] > (1 << 24):
                raise CheckpointError(f"{path}: header is implausibly large")
            with zf.open("format_version.npy") as fh:
                version = int(np.lib.format.read_array(fh, allow_pickle=False))
            if version != FORMAT_VERSION:
                raise CheckpointError(f"{path}: checkpoint format {version}, this fastact reads "
                                      f"{FORMAT_VERSION}")
            with zf.open("header.npy") as fh:
                header = json.loads(np.lib.format.read_array(fh, allow_pickle=False).tobytes())
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({exc})") from None
    except (ValueError, OSError, EOFError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from None
    return header, members


def load(path, expect_model=None):
    """(header, model_state, optim_state). ``expect_model``: {key: shape} the model needs; checked first."""
    header, members = read_header(path)
    if expect_model is not None:
        got = {k[len("model/"):]: s for k, (s, _) in members.items() if k.startswith("model/")}
        if set(got) != set(expect_model):
            raise CheckpointError(f"{path}: parameters {sorted(got)} do not match the model's "
                                  f"{sorted(expect_model)}")
        for k, shape in expect_model.items():
            if tuple(got[k]) != tuple(shape):
                raise CheckpointError(f"{path}: {k} has shape {got[k]} in the checkpoint, the model "
                                      f"needs {tuple(shape)}")
    model, optim = {}, {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for k in z.files:
                if k.startswith("model/"):
                    model[k[len("model/"):]] = z[k]
                elif k.startswith("optim/"):
                    optim[k[len("optim/"):]] = z[k]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint ({exc})") from None
    return header, model, optim
