"""Plain-numpy twins of every kernel, written for clarity, not speed.

The tests compare each Numba/BLAS kernel against its twin here.  These
functions return new arrays instead of writing into buffers.
"""

from __future__ import annotations

import numpy as np


def activation(z: np.ndarray, kind: str) -> np.ndarray:
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if kind == "tanh":
        return np.tanh(z)
    if kind == "relu":
        return np.maximum(z, 0)
    if kind == "linear":
        return z.copy()
    raise ValueError(kind)


def activation_grad_from_output(y: np.ndarray, kind: str) -> np.ndarray:
    if kind == "sigmoid":
        return y * (1 - y)
    if kind == "tanh":
        return 1 - y * y
    if kind == "relu":
        return (y > 0).astype(y.dtype)
    if kind == "linear":
        return np.ones_like(y)
    raise ValueError(kind)


def dense_forward(x, w, b, kind):
    return activation(x @ w + b, kind)


def dense_backward(x, w, y, dy, kind, need_dx=True):
    dz = dy * activation_grad_from_output(y, kind)
    dw = x.T @ dz
    db = dz.sum(axis=0)
    dx = dz @ w.T if need_dx else None
    return dz, dw, db, dx


def softmax_cross_entropy(z, labels):
    """Returns (summed loss, n_correct, dz = (softmax - onehot) / batch)."""
    z64 = z.astype(np.float64)
    z64 = z64 - z64.max(axis=1, keepdims=True)
    logsum = np.log(np.exp(z64).sum(axis=1))
    n = z.shape[0]
    loss = float((logsum - z64[np.arange(n), labels]).sum())
    p = np.exp(z64 - logsum[:, None])
    p[np.arange(n), labels] -= 1.0
    correct = int((z.argmax(axis=1) == labels).sum())
    return loss, correct, (p / n).astype(np.float32)


def sgd(w, g, lr, weight_decay=0.0):
    return w - lr * (g + weight_decay * w)


def momentum(w, g, v, lr, mu, nesterov, weight_decay=0.0):
    d = g + weight_decay * w
    v = mu * v + d
    step = d + mu * v if nesterov else v
    return w - lr * step, v


def adagrad(w, g, acc, lr, eps):
    acc = acc + g * g
    return w - lr * g / np.sqrt(acc + eps), acc
