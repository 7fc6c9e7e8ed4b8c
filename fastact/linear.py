"""Fully connected layer with a fused bias + activation epilogue, and its backward.

Shape key: N rows (batch; any leading dimensions are flattened into it), I in_features, O out_features.
x (..., I), weight (O, I) as PyTorch, bias (O,), y (..., O).
"""

import numpy as np

from . import _blas, _epilogue
from ._util import compute_dtype as _compute_dtype
from ._util import check_preactivation

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


def linear(x, weight, bias=None, *, activation=None, activation_params=None, return_preactivation=False):
    """``y = act(z)`` with ``z = x @ weight.T + bias``, the bias and activation applied in one pass after
    the GEMM.

    Parameters
    ----------
    x : array_like, shape (..., in_features)
    weight : array_like, shape (out_features, in_features)
    bias : array_like, shape (out_features,), optional
    activation : str, optional
        Any elementwise activation of the table.
    activation_params : dict or sequence, optional
        The activation's parameters, scalars only.
    return_preactivation : bool, default False
        Also return the pre-activation ``z``, written in the same pass as ``y``: what
        :func:`linear_backward` needs to differentiate through the activation. Without an activation
        ``z`` is ``y`` itself (no copy).

    Returns
    -------
    y : ndarray, shape (..., out_features)
    z : ndarray, shape (..., out_features)
        Only with ``return_preactivation=True``.

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> fa.linear(np.array([[1.0, -2.0]]), np.array([[1.0, 1.0], [0.0, 1.0]]), activation="relu")
    array([[0., 0.]])
    >>> y, z = fa.linear(np.array([[1.0, -2.0]]), np.array([[1.0, 1.0], [0.0, 1.0]]), activation="relu",
    ...                  return_preactivation=True)
    >>> z
    array([[-1., -2.]])
    """
    keep_z = return_preactivation and activation is not None
    y, z = _linear_forward(x, weight, bias, activation, activation_params, keep_z)
    if not return_preactivation:
        return y
    return y, (z if keep_z else y)


def _linear_forward(x, weight, bias, activation, activation_params, keep_z):
    """linear, returning (y, z) where z is the pre-activation output when keep_z (else None)."""
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


def linear_backward(dy, x, weight, *, preactivation=None, activation=None, activation_params=None,
                    need_input_grad=True):
    """Gradients of :func:`linear`: ``(dx, dweight, dbias)``.

    Without ``activation``, ``dy`` is the gradient of the pre-activation ``z = x @ weight.T + bias``.
    With ``activation``, ``dy`` is the gradient of ``y = act(z)`` and ``preactivation`` must be the
    forward's ``z`` (``linear(..., return_preactivation=True)``); ``dz = dy * act'(z)`` and the bias
    gradient then come out of one pass. From ``dz`` (rows = the leading dimensions flattened):
    ``dx = dz @ weight``, ``dweight = dz.T @ x``, ``dbias = dz`` summed over the rows.

    Parameters
    ----------
    dy : array_like, shape (..., out_features)
    x : array_like, shape (..., in_features)
    weight : array_like, shape (out_features, in_features)
    preactivation : array_like, shape (..., out_features), optional
        The forward's ``z``; required with ``activation``, ignored without.
    activation : str, optional
        The activation the forward fused.
    activation_params : dict or sequence, optional
        Its parameters as in the forward, plus any backward parameters of the table (e.g. ReLU's
        ``subgradient``).
    need_input_grad : bool, default True
        False skips the input gradient (``dx`` is None) and its GEMM.

    Returns
    -------
    dx : ndarray, shape (..., in_features), or None
    dweight : ndarray, shape (out_features, in_features)
    dbias : ndarray, shape (out_features,)

    Examples
    --------
    >>> import numpy as np, fastact as fa
    >>> w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> dx, dw, db = fa.linear_backward(np.array([[1.0, 0.0, 1.0]]), np.array([[1.0, 2.0]]), w)
    >>> dx, db
    (array([[2., 1.]]), array([1., 0., 1.]))

    Through a fused ReLU, the gradient passes only where the pre-activation was positive:

    >>> x = np.array([[1.0, -2.0]])
    >>> y, z = fa.linear(x, w, activation="relu", return_preactivation=True)
    >>> z
    array([[ 1., -2., -1.]])
    >>> dx, dw, db = fa.linear_backward(np.ones((1, 3)), x, w, preactivation=z, activation="relu")
    >>> dx, db
    (array([[1., 0.]]), array([1., 0., 0.]))
    """
    x, x2, w, _, dt = _prepare(x, weight, None)
    O = w.shape[0]
    dy = np.asarray(dy)
    expect = x.shape[:-1] + (O,)
    if dy.shape != expect:
        raise ValueError(f"linear_backward: dy has shape {dy.shape}, expected {expect} for x {x.shape} "
                         f"and weight {w.shape}")
    dy2 = np.ascontiguousarray(dy.reshape(-1, O), dtype=dt)
    if activation is None:
        _epilogue.param_values(None, activation_params)  # ValueError for parameters without activation
        dz = dy2
        db = dy2.sum(axis=0, dtype=np.float64).astype(dt)
    else:
        z = np.ascontiguousarray(check_preactivation("linear_backward", preactivation, dy.shape, activation)
                                 .reshape(-1, O), dtype=dt)
        pv = [dt.type(v) for v in _epilogue.param_values(activation, activation_params, backward=True)]
        dz = np.empty_like(dy2)
        db64 = np.empty(O, dtype=np.float64)
        if dz.size:
            _epilogue.get("linear_backward", activation)(dy2, z, dz, db64, *pv)
        else:
            db64[:] = 0.0
        db = db64.astype(dt)
    dx = _blas.matmul(dz, w).reshape(x.shape) if need_input_grad else None
    return dx, _blas.matmul(dz.T, x2), db
