"""Dense test grids for accuracy scans: every kink approached from both sides, both tails, and zero."""

import numpy as np


def grid(domain, kinks, dtype, n_uniform=400):
    """Points of ``dtype`` (returned as float64): uniform over ``domain``, each finite kink and its
    neighbours (1-4 ulps, then 2**-1 ... 2**-50 away on either side), geometric tails out to the
    largest finite value on both sides, and +-2**-k down through the subnormals."""
    dtype = np.dtype(dtype)
    fi = np.finfo(dtype)
    pts = [np.linspace(domain[0], domain[1], n_uniform)]
    offsets = 2.0 ** -np.arange(1, 51)
    for k in kinks:
        if not np.isfinite(k):
            continue
        kd = dtype.type(k)
        near = [kd]
        up, down = kd, kd
        for _ in range(4):
            up = np.nextafter(up, dtype.type(np.inf))
            down = np.nextafter(down, dtype.type(-np.inf))
            near += [up, down]
        pts += [np.array(near, dtype=np.float64), k + offsets, k - offsets]
    with np.errstate(over="ignore"):
        tail = np.geomspace(1.0, float(fi.max), 300)
    pts += [tail, -tail]
    tiny = 2.0 ** -np.arange(0, -np.log2(float(fi.smallest_subnormal)) + 1, 3)
    pts += [tiny, -tiny, np.array([0.0, -0.0])]
    with np.errstate(over="ignore"):
        x = np.concatenate(pts).astype(dtype)
    x = x[np.isfinite(x)]
    return np.unique(x).astype(np.float64)
