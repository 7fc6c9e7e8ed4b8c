"""A tiled shared-memory GEMM for device arrays: the matrix products of the conv and linear layers.

Each block computes one TILE x TILE tile of ``c`` (grid-strided over the tiles when there are more than
``MAX_BLOCKS`` in a direction), staging TILE x TILE tiles of ``a`` and ``b`` in shared memory. It takes
any strides, so the backward passes give it transposed views (``_device.transposed``) without copies.
Accumulation is in ``c``'s dtype.
"""

from ._device import cached, kernel, require, setting

__all__ = ["matmul"]


# A kernel body, not called directly: ``kernel()`` compiles it with ``cuda`` and ``T`` (the tile edge)
# bound as globals.
def _k_gemm(a, b, c, zero):
    # c (M, N) = a (M, K) @ b (K, N); one output element per thread
    sa = cuda.shared.array((T, T), dtype=c.dtype)
    sb = cuda.shared.array((T, T), dtype=c.dtype)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    M, K = a.shape
    N = b.shape[1]
    for bi in range(cuda.blockIdx.y, (M + T - 1) // T, cuda.gridDim.y):
        for bj in range(cuda.blockIdx.x, (N + T - 1) // T, cuda.gridDim.x):
            i = bi * T + ty
            j = bj * T + tx
            acc = zero
            for k0 in range(0, K, T):
                sa[ty, tx] = a[i, k0 + tx] if (i < M and k0 + tx < K) else zero
                sb[ty, tx] = b[k0 + ty, j] if (k0 + ty < K and j < N) else zero
                cuda.syncthreads()
                for kk in range(T):
                    acc += sa[ty, kk] * sb[kk, tx]
                cuda.syncthreads()
            if i < M and j < N:
                c[i, j] = acc


def matmul(a, b, out=None):
    """``a @ b`` for 2-D device arrays (strided views allowed) with the tiled GEMM kernel.

    Parameters
    ----------
    a : device array, shape (M, K)
        Any strides: a transposed view (not numba-cuda's ``.T``, which copies) costs no copy.
    b : device array, shape (K, N), of ``a``'s dtype
    out : device array, shape (M, N), optional
        Written in place and returned.

    Returns
    -------
    device array, shape (M, N)

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import cuda
    >>> a = cuda.to_device(np.eye(2)); b = cuda.to_device(np.arange(4.0).reshape(2, 2))  # doctest: +SKIP
    >>> cuda.matmul(a, b).copy_to_host()                                                # doctest: +SKIP
    array([[0., 1.],
           [2., 3.]])
    """
    cuda = require()
    if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not fit")
    M, N = a.shape[0], b.shape[1]
    if a.dtype != b.dtype:
        raise TypeError(f"matmul: a is {a.dtype} but b is {b.dtype}")
    if out is not None and (tuple(out.shape) != (M, N) or out.dtype != a.dtype):
        raise ValueError(f"matmul: out must be ({M}, {N}) {a.dtype}, got {tuple(out.shape)} {out.dtype}")
    c = cuda.device_array((M, N), dtype=a.dtype) if out is None else out
    if M and N:
        tile, max_blocks = setting("TILE"), setting("MAX_BLOCKS")
        k = cached(("gemm", tile), lambda: kernel(_k_gemm, T=tile))
        grid = (min(max_blocks, (N + tile - 1) // tile), min(max_blocks, (M + tile - 1) // tile))
        k[grid, (tile, tile)](a, b, c, c.dtype.type(0))
    return c
