"""Fully connected layer with a fused bias + activation epilogue, and its backward.

Shape key: N rows (batch; any leading dimensions are flattened into it), I in_features, O out_features.
x (..., I), weight (O, I) as PyTorch, bias (O,), y (..., O).
"""

import numpy as np

from . import _blas, _epilogue
from ._util import compute_dtype as _compute_dtype

__all__ = ["linear", "linear_backward"]


def _prepare(x, weight, bias):
    x = np.asarray(x)
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got shape {weight.shape}")
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: x of shape {x.shape} does not match weight of shape {weight.shape} "
                         f"(x's last dimension must be in_features = {weight.shape[1]})")
    dt = _compute_dtype(x.dtype, weight.dtype)
    if bias is not None:
        bias = np.asarray(bias)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"linear: bias must have shape ({weight.shape[0]},) for weight of shape "
                             f"{weight.shape}, got {bias.shape}")
        dt = _compute_dtype(dt, bias.dtype)
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=dt)
    return x, x2, np.ascontiguousarray(weight, dtype=dt), bias, dt


def linear(x, weight, bias=None, *, activation=None, activation_params=None):
    """``y = act(x @ weight.T + bias)``, the activation applied in the pass after the GEMM.

    Parameters
    ----------
    x : array_like, shape (..., in_features)
    weight : array_like, shape (out_features, in_features)
    bias : array_like, shape (out_features,), optional
    activation : str, optional
        Any elementwise activation of the table.
    activation_params : dict or sequence, optional

    Returns
    -------
    ndarray, shape (..., out_features)

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> fa.linear(np.array([[1.0, -2.0]]), np.array([[1.0, 1.0], [0.0, 1.0]]), activation="relu")
    array([[0., 0.]])
    """
    y, _ = _linear_forward(x, weight, bias, activation, activation_params, False)
    return y


def _linear_forward(x, weight, bias, activation, activation_params, keep_z):
    x, x2, w, bias, dt = _prepare(x, weight, bias)
    pv = [dt.type(v) for v in _epilogue.param_values(activation, activation_params)]
    O = w.shape[0]
    g = _blas.matmul(x2, w.T)          # (N, O)
    b = np.zeros(O, dtype=dt) if bias is None else np.ascontiguousarray(bias, dtype=dt)
    z = g.copy() if keep_z else None  # pre-activation = g + b, written by the epilogue below
    if g.size:
        _epilogue.get("linear", activation)(g, b, g, z if keep_z else np.empty((0, 0), dt), *pv)
    shape = x.shape[:-1] + (O,)
    return g.reshape(shape), (z.reshape(shape) if keep_z else None)


def linear_backward(dy, x, weight):
    """Gradients of :func:`linear` without its activation: ``(dx, dweight, dbias)``.

    ``dx = dy @ weight``, ``dweight = dy.T @ x`` (summed over the leading dimensions), ``dbias = dy``
    summed over them.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> dx, dw, db = fa.linear_backward(np.array([[1.0, 0.0, 1.0]]), np.array([[1.0, 2.0]]), w)
    >>> dx, db
    (array([[2., 1.]]), array([1., 0., 1.]))
    """
    x, x2, w, _, dt = _prepare(x, weight, None)
    dy = np.asarray(dy)
    expect = x.shape[:-1] + (w.shape[0],)
    if dy.shape != expect:
        raise ValueError(f"linear_backward: dy has shape {dy.shape}, expected {expect} for x {x.shape} "
                         f"and weight {w.shape}")
    dy2 = np.ascontiguousarray(dy.reshape(-1, w.shape[0]), dtype=dt)
    dx = _blas.matmul(dy2, w).reshape(x.shape)
    dw = _blas.matmul(dy2.T, x2)
    db = dy2.sum(axis=0, dtype=np.float64).astype(dt)
    return dx, dw, db


def _linear_layer_backward(dy, z, x, weight, activation, activation_params, need_dx=True):
    """Backward of the fused linear + bias + activation layer from the saved pre-activation ``z``."""
    dt = z.dtype
    O = weight.shape[0]
    z2 = z.reshape(-1, O)
    dz = np.empty_like(z2)
    part = np.empty((z2.shape[0], O), dtype=np.float64)
    pv = [dt.type(v) for v in _epilogue.param_values(activation, activation_params, backward=True)]
    _epilogue.get("backward", activation)(
        np.ascontiguousarray(dy, dtype=dt).reshape(-1, O, 1), z2.reshape(-1, O, 1),
        dz.reshape(-1, O, 1), part, *pv)
    x2 = np.ascontiguousarray(x, dtype=dt).reshape(-1, weight.shape[1])
    dx = _blas.matmul(dz, weight).reshape(x.shape) if need_dx else None
    return dx, _blas.matmul(dz.T, x2), part.sum(axis=0).astype(dt)
