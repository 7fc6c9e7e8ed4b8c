"""Data sets for ``python -m fastact train`` and a seeded batch loader.

* ``digits``: the 8x8 handwritten digits that scikit-learn ships (1797 images, no download);
* ``mnist``: the IDX files (``train-images-idx3-ubyte`` etc., raw or ``.gz``) from ``data_dir``;
* ``cifar10``: the python batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``) from
  ``data_dir`` (the directory itself or its ``cifar-10-batches-py`` subdirectory).

Every loader returns ``(x_train, y_train, x_test, y_test)``: float32 NCHW images standardised with the
training set's mean and standard deviation, int64 labels. :func:`select_classes` keeps a subset of the
classes (``python -m fastact train --classes airplane,bird``), relabelled 0..k-1 in the order given.

CIFAR-10's official python format is a pickle per batch; it is read with an unpickler that refuses
every class (only the plain dicts, lists and bytes of a batch load), so a crafted file cannot run code.
fastact's own files (checkpoints) never use pickle.
"""

import gzip
import io
import os
import pickle

import numpy as np

__all__ = ["load", "load_digits", "read_digits", "load_mnist", "load_cifar10", "read_idx", "batches",
           "DATASETS", "CLASSES", "class_indices", "select_classes"]

#: class names per data set, in label order (CIFAR-10's from its ``batches.meta``)
CLASSES = {"digits": tuple("0123456789"), "mnist": tuple("0123456789"),
           "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                       "truck")}


class DataError(Exception):
    """A data set is missing or malformed; the message says what and where."""


def _standardise(x_train, x_test):
    mean = x_train.mean(dtype=np.float64)
    std = x_train.std(dtype=np.float64) or 1.0
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def _digits_file():
    """Path of the digits CSV that scikit-learn ships, found without importing scikit-learn (whose
    import costs more than fastact's: ``python -X importtime -c "import sklearn.datasets"``), or None."""
    import importlib.util
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.exists(path):
            return path
    return None


def read_digits():
    """scikit-learn's digits as ``sklearn.datasets.load_digits`` reads them, without importing it.

    Returns
    -------
    images : ndarray, shape (1797, 8, 8), float64
        Pixel values 0..16.
    labels : ndarray, shape (1797,), int

    >>> images, labels = read_digits()
    >>> images.shape, int(images.max()), labels[:5].tolist()
    ((1797, 8, 8), 16, [0, 1, 2, 3, 4])
    """
    path = _digits_file()
    if path is None:  # another layout of scikit-learn: its own loader
        try:
            from sklearn.datasets import load_digits as sk_digits
        except ImportError:
            raise DataError("the digits data set comes with scikit-learn, which is not installed "
                            "(pip install scikit-learn)") from None
        d = sk_digits()
        return d.images, d.target
    with gzip.open(path, "rt") as fh:
        data = np.loadtxt(fh, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def load_digits(test_fraction=0.2, seed=0, rgb32=False):
    """scikit-learn's digits as (N, 1, 8, 8), split with a seeded permutation; with ``rgb32``, as
    (N, 3, 32, 32): each pixel a 4x4 block, the same in the three channels, the input the reference
    networks of :mod:`fastact.models` take (``python -m fastact train --model net_res --dataset digits``)."""
    images, target = read_digits()
    x = images.astype(np.float32)[:, None, :, :] / 16.0
    if rgb32:
        x = np.repeat(np.repeat(np.repeat(x, 3, axis=1), 4, axis=2), 4, axis=3)
    y = target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    xtr, xte = _standardise(x[train], x[test])
    return xtr, y[train], xte, y[test]


def _open(path):
    for p in (path, path + ".gz"):
        if os.path.exists(p):
            return gzip.open(p, "rb") if p.endswith(".gz") else open(p, "rb")
    raise DataError(f"missing file: looked for {path} and {path}.gz")


def read_idx(path):
    """Read one IDX file (raw or .gz): magic 0x0000 <type> <ndim>, big-endian int32 sizes, data."""
    with _open(path) as fh:
        head = fh.read(4)
        if len(head) != 4 or head[0] != 0 or head[1] != 0:
            raise DataError(f"{path}: not an IDX file (bad magic {head!r})")
        types = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
        if head[2] not in types:
            raise DataError(f"{path}: unknown IDX data type 0x{head[2]:02x}")
        ndim = head[3]
        dims = np.frombuffer(fh.read(4 * ndim), dtype=">i4")
        if dims.size != ndim or np.any(dims < 0):
            raise DataError(f"{path}: truncated or invalid IDX header")
        dt = np.dtype(types[head[2]])
        count = int(np.prod(dims, dtype=np.int64))
        data = fh.read(count * dt.itemsize)
        if len(data) != count * dt.itemsize:
            raise DataError(f"{path}: truncated: header promises {count} values of {dt}, file is shorter")
        return np.frombuffer(data, dtype=dt).reshape(tuple(int(d) for d in dims))


#: where the files of the data sets that do not ship come from, and the layout the loaders read
SOURCES = {
    "mnist": "MNIST's four IDX files as the MNIST database publishes them (train-images-idx3-ubyte, "
             "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; raw or .gz; "
             "Fashion-MNIST's files have the same names and format) in one directory",
    "cifar10": "CIFAR-10's python version (the archive cifar-10-python.tar.gz from the CIFAR-10 page of "
               "the University of Toronto, unpacked): the directory cifar-10-batches-py, holding "
               "data_batch_1 .. data_batch_5 and test_batch, or the directory that contains it",
}


def load_mnist(data_dir):
    """MNIST (or Fashion-MNIST) from the four IDX files in ``data_dir``, as (N, 1, 28, 28).

    ``data_dir`` holds ``SOURCES["mnist"]``; DataError naming the missing file otherwise."""
    if not data_dir:
        raise DataError(f"load_mnist needs data_dir: {SOURCES['mnist']}")
    f = lambda name: read_idx(os.path.join(data_dir, name))
    try:
        xtr, ytr = f("train-images-idx3-ubyte"), f("train-labels-idx1-ubyte")
        xte, yte = f("t10k-images-idx3-ubyte"), f("t10k-labels-idx1-ubyte")
    except DataError as exc:
        if str(exc).startswith("missing file"):
            raise DataError(f"{exc}; mnist reads {SOURCES['mnist']}") from None
        raise
    if xtr.ndim != 3 or len(xtr) != len(ytr) or xte.ndim != 3 or len(xte) != len(yte):
        raise DataError(f"{data_dir}: image and label files disagree ({xtr.shape} vs {ytr.shape}, "
                        f"{xte.shape} vs {yte.shape})")
    a, b = _standardise(xtr[:, None].astype(np.float32) / 255, xte[:, None].astype(np.float32) / 255)
    return a, ytr.astype(np.int64), b, yte.astype(np.int64)


class _BatchUnpickler(pickle.Unpickler):
    """CIFAR's python batches are pickles. The official files hold a NumPy uint8 array (rebuilt by
    ``numpy.core.multiarray._reconstruct`` from ``numpy.ndarray`` and ``numpy.dtype``; a batch pickled
    by Python 3 also stores its raw bytes through ``_codecs.encode``): exactly those are allowed, and
    nothing else, so a crafted file cannot call anything."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _cifar_batch(path):
    if not os.path.exists(path):
        raise DataError(f"missing file: {path}")
    with open(path, "rb") as fh:
        try:
            d = _BatchUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
        except Exception as exc:
            raise DataError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    try:
        raw = d[b"data"]
        if isinstance(raw, np.ndarray) and raw.dtype != np.uint8:
            raise ValueError(f"data has dtype {raw.dtype}, expected uint8")
        data = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, bytes) else np.asarray(raw, dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
        data = data.reshape(-1, 3, 32, 32)
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise DataError(f"{path}: malformed CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
    if labels.shape != (len(data),) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{path}: {len(data)} images but labels of shape {labels.shape} "
                        f"(values must be 0..9)")
    return data, labels


def load_cifar10(data_dir):
    """CIFAR-10 from its python batches in ``data_dir``, as (N, 3, 32, 32).

    ``data_dir`` is ``SOURCES["cifar10"]``; DataError naming the missing file otherwise."""
    if not data_dir:
        raise DataError(f"load_cifar10 needs data_dir: {SOURCES['cifar10']}")
    sub = os.path.join(data_dir, "cifar-10-batches-py")
    root = sub if os.path.isdir(sub) else data_dir
    try:
        parts = [_cifar_batch(os.path.join(root, f"data_batch_{i}")) for i in range(1, 6)]
        xte, yte = _cifar_batch(os.path.join(root, "test_batch"))
    except DataError as exc:
        if str(exc).startswith("missing file"):
            raise DataError(f"{exc}; cifar10 reads {SOURCES['cifar10']}") from None
        raise
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    a, b = _standardise(xtr.astype(np.float32) / 255, xte.astype(np.float32) / 255)
    return a, ytr, b, yte


DATASETS = {"digits": lambda data_dir, seed: load_digits(seed=seed),
            "mnist": lambda data_dir, seed: load_mnist(data_dir),
            "cifar10": lambda data_dir, seed: load_cifar10(data_dir)}


def load(name, data_dir=None, seed=0):
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name](data_dir, seed)


def class_indices(dataset, names):
    """The labels of the class ``names`` (a list, or one comma-separated string) in ``dataset``.

    Raises DataError naming the valid names for an unknown or repeated name, or fewer than two.

    Examples
    --------
    >>> from fastact import data
    >>> data.class_indices("cifar10", "airplane,bird")
    [0, 2]
    """
    valid = CLASSES[dataset]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise DataError(f"unknown {dataset} class(es) {unknown}; the classes are {', '.join(valid)}")
    if len(set(names)) != len(names) or len(names) < 2:
        raise DataError(f"--classes needs two or more distinct {dataset} classes, got {names}")
    return [valid.index(n) for n in names]


def select_classes(x, y, labels):
    """The images of the classes ``labels`` only, relabelled 0..k-1 in the order of ``labels``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import data
    >>> x, y = np.arange(5), np.array([2, 0, 1, 2, 0])
    >>> data.select_classes(x, y, [2, 0])
    (array([0, 1, 3, 4]), array([0, 1, 0, 1]))
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or labels.size == 0 or labels.min() < 0 or len(set(labels.tolist())) != len(labels):
        raise ValueError(f"select_classes: labels must be distinct non-negative class numbers, got {labels}")
    lut = np.full(max(int(labels.max()), int(y.max(initial=0))) + 1, -1, dtype=np.int64)
    lut[labels] = np.arange(len(labels))
    keep = lut[y] >= 0
    return x[keep], lut[y[keep]]


def batches(x, y, batch_size, *, shuffle=True, seed=0, epoch=0):
    """Yield (x_batch, y_batch); the order depends only on (seed, epoch), so a resumed run repeats it."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batches: batch_size must be a positive integer, got {batch_size!r}")
    if len(x) != len(y):
        raise ValueError(f"batches: x has {len(x)} items but y has {len(y)}")
    n = len(y)
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]
