"""Optimizers with PyTorch's update rules (``torch.optim.SGD`` and ``torch.optim.Adam``, L2 weight decay).

Each works in place on ``param.data`` from ``param.grad``; ``state_dict()``/``load_state_dict()`` hold
the per-parameter buffers as plain arrays (for checkpoints, no pickle).
"""

import numpy as np

from . import _runtime

__all__ = ["Optimizer", "SGD", "Adam"]


class Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        self.lr = float(lr)

    def zero_grad(self):
        for p in self.params:
            p.grad[...] = 0

    def state_dict(self):
        raise NotImplementedError

    def load_state_dict(self, state):
        raise NotImplementedError

    def _load_buffers(self, state, names):
        for name in names:
            for i, p in enumerate(self.params):
                key = f"{name}.{i}"
                if key in state:
                    v = np.asarray(state[key])
                    if v.shape != p.data.shape:
                        raise ValueError(f"optimizer state {key} has shape {v.shape}, parameter {i} "
                                         f"has {p.data.shape}")


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, weight decay and Nesterov, as PyTorch.

    The update of each parameter ``p`` with gradient ``grad``::

        g = grad + weight_decay * p
        buf = g (first step) or momentum * buf + (1 - dampening) * g
        g = g + momentum * buf (nesterov) or buf
        p -= lr * g
    """

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"invalid momentum {momentum} or weight_decay {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)
        self.buffers = [None] * len(self.params)

    def step(self):
        for i, p in enumerate(self.params):
            g = p.grad
            if self.weight_decay:
                g = g + self.weight_decay * p.data
            if self.momentum:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = np.array(g, copy=True)
                else:
                    buf *= self.momentum
                    buf += (1.0 - self.dampening) * g
                g = g + self.momentum * buf if self.nesterov else buf
            p.data -= p.data.dtype.type(self.lr) * g

    def state_dict(self):
        return {f"momentum_buffer.{i}": b for i, b in enumerate(self.buffers) if b is not None}

    def load_state_dict(self, state):
        self._load_buffers(state, ["momentum_buffer"])
        self.buffers = [np.array(state[f"momentum_buffer.{i}"], dtype=p.data.dtype)
                        if f"momentum_buffer.{i}" in state else None for i, p in enumerate(self.params)]


@_runtime.jit()
def _adam_update(p, g, m, v, lr, b1, b2, eps, wd, bc1, bc2_sqrt):
    # p, g, m, v are 1-D views of one parameter; PyTorch's single-tensor Adam, one fused pass
    step_size = lr / bc1
    for i in range(p.size):
        gi = g[i] + wd * p[i]
        m[i] = b1 * m[i] + (1.0 - b1) * gi
        v[i] = b2 * v[i] + (1.0 - b2) * gi * gi
        p[i] -= step_size * m[i] / (np.sqrt(v[i]) / bc2_sqrt + eps)


class Adam(Optimizer):
    """Adam (Kingma & Ba, arXiv:1412.6980) with bias correction and L2 weight decay, as ``torch.optim.Adam``.

    The update of each parameter ``p`` with gradient ``grad`` at step ``t``::

        g = grad + weight_decay * p
        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1) or eps < 0 or weight_decay < 0:
            raise ValueError(f"invalid Adam hyper-parameters betas={betas}, eps={eps}, "
                             f"weight_decay={weight_decay}")
        self.betas, self.eps, self.weight_decay = (float(b1), float(b2)), float(eps), float(weight_decay)
        self.t = 0
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]

    def step(self):
        self.t += 1
        b1, b2 = self.betas
        bc1 = 1.0 - b1 ** self.t
        bc2_sqrt = np.sqrt(1.0 - b2 ** self.t)
        for p, m, v in zip(self.params, self.m, self.v):
            t = p.data.dtype.type
            _adam_update(p.data.reshape(-1), p.grad.reshape(-1), m.reshape(-1), v.reshape(-1),
                         t(self.lr), t(b1), t(b2), t(self.eps), t(self.weight_decay), t(bc1), t(bc2_sqrt))

    def state_dict(self):
        d = {"step": np.array(self.t, dtype=np.int64)}
        d.update({f"exp_avg.{i}": m for i, m in enumerate(self.m)})
        d.update({f"exp_avg_sq.{i}": v for i, v in enumerate(self.v)})
        return d

    def load_state_dict(self, state):
        self._load_buffers(state, ["exp_avg", "exp_avg_sq"])
        self.t = int(state["step"])
        self.m = [np.array(state[f"exp_avg.{i}"], dtype=p.data.dtype) for i, p in enumerate(self.params)]
        self.v = [np.array(state[f"exp_avg_sq.{i}"], dtype=p.data.dtype) for i, p in enumerate(self.params)]
