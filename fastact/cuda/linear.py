"""Fully connected layer on device arrays: ``act(x @ weight.T + bias)`` with bias and activation fused
into the GEMM's epilogue, and its backward with the activation's backward fused with the bias sum.

Shape key: N rows, I input features, K output features. x (N, I), weight (K, I), y (N, K).
"""

from .._epilogue import param_values
from . import _epilogue
from ._device import as_device, device_bias, device_preactivation, launch_1d, require, same_dtype, transposed, zeros
from .gemm import matmul

__all__ = ["linear", "linear_backward"]


def _check(where, x, w):
    if len(x.shape) != 2 or len(w.shape) != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"{where}: x {tuple(x.shape)} and weight {tuple(w.shape)} do not fit "
                         f"(x must be (N, in_features), weight (out_features, in_features))")


def linear(x, weight, bias=None, *, activation=None, activation_params=None, return_preactivation=False):
    """:func:`fastact.linear` on device arrays: ``act(x @ weight.T + bias)`` for 2-D ``x``.

    Parameters
    ----------
    x : device array, shape (N, in_features), float32 or float64
    weight : device array, shape (out_features, in_features), of ``x``'s dtype
    bias : device array, shape (out_features,), optional
    activation : str, optional
        Any elementwise activation of the table, applied in the pass that adds the bias.
    activation_params : dict or sequence, optional
    return_preactivation : bool
        Also return ``z = x @ weight.T + bias`` (``y`` itself when there is no activation).

    Returns
    -------
    y : device array, shape (N, out_features)
    z : device array, shape (N, out_features)
        Only with ``return_preactivation=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import cuda
    >>> x = cuda.to_device(np.array([[1.0, -2.0]])); w = cuda.to_device(np.eye(2))  # doctest: +SKIP
    >>> cuda.linear(x, w, activation="relu").copy_to_host()                        # doctest: +SKIP
    array([[1., 0.]])
    """
    cuda = require()
    x = as_device(x, "x")
    w = as_device(weight, "weight")
    _check("linear", x, w)
    same_dtype("linear", x=x, weight=w)
    N, K = x.shape[0], w.shape[0]
    dt = x.dtype
    b = device_bias("linear", bias, K, w, x)
    pv = [dt.type(v) for v in param_values(activation, activation_params)]
    keep = return_preactivation and activation is not None
    y = matmul(x, transposed(w))  # the epilogue then works in place
    z = cuda.device_array((N, K) if keep else (0, 0), dtype=dt)
    if y.size:
        blocks, threads = launch_1d(y.size)
        _epilogue.forward(activation, "linear")[blocks, threads](y, b, y, z, *pv)
    if not return_preactivation:
        return y
    return y, (z if keep else y)


def linear_backward(dy, x, weight, *, preactivation=None, activation=None, activation_params=None,
                    need_input_grad=True):
    """Gradients ``(dx, dweight, dbias)`` of :func:`linear` on device arrays.

    Parameters
    ----------
    dy : device array, shape (N, out_features)
        Without ``activation``, the gradient of ``x @ weight.T + bias``; with it, of the activation's
        output.
    x, weight
        As given to :func:`linear`.
    preactivation : device array, shape (N, out_features)
        The ``z`` of ``linear(..., return_preactivation=True)``; required with ``activation``.
    activation : str, optional
        The activation :func:`linear` fused; ``dz = dy * act'(z)`` is formed in the pass that sums the
        bias gradient.
    activation_params : dict or sequence, optional
        Its parameters, backward ones (``subgradient``) included.
    need_input_grad : bool
        False skips ``dx = dz @ weight`` and returns ``dx=None``.

    Returns
    -------
    dx : device array, shape (N, in_features), or None
    dweight : device array, shape (out_features, in_features)
    dbias : device array, shape (out_features,)

    Examples
    --------
    >>> import numpy as np
    >>> from fastact import cuda
    >>> w = cuda.to_device(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))            # doctest: +SKIP
    >>> dx, dw, db = cuda.linear_backward(cuda.to_device(np.array([[1.0, 0.0, 1.0]])),
    ...                                   cuda.to_device(np.array([[1.0, 2.0]])), w)  # doctest: +SKIP
    >>> dx.copy_to_host(), db.copy_to_host()                                         # doctest: +SKIP
    (array([[2., 1.]]), array([1., 0., 1.]))
    """
    cuda = require()
    x = as_device(x, "x")
    w = as_device(weight, "weight")
    dy = as_device(dy, "dy")
    _check("linear_backward", x, w)
    N, K = x.shape[0], w.shape[0]
    if tuple(dy.shape) != (N, K):
        raise ValueError(f"linear_backward: dy has shape {tuple(dy.shape)}, expected {(N, K)} for x "
                         f"{tuple(x.shape)} and weight {tuple(w.shape)}")
    same_dtype("linear_backward", dy=dy, x=x, weight=w)
    dt = x.dtype
    pv = [dt.type(v) for v in param_values(activation, activation_params, backward=True)]
    z, dz = device_preactivation("linear_backward", "linear", activation, preactivation, dy)
    if N == 0:
        db = zeros(K, dt)
    else:
        db = cuda.device_array(K, dtype=dt)
        blocks, threads = launch_1d(K)
        _epilogue.backward(activation, "cols")[blocks, threads](
            dy, z, cuda.device_array((0, 0), dtype=dt) if dz is None else dz, db, *pv)
    dz = dy if dz is None else dz
    dx = matmul(dz, w) if need_input_grad else None
    dw = matmul(transposed(dz), x)
    return dx, dw, db
