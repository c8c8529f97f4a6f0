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


# Locally connected layers and pooling, NHWC (see dbnet.kernels.local and dbnet.kernels.pool).

def patches(x, k, stride):
    """im2col: (batch, Ho, Wo, k, k, C) view of the k x k patches of x (batch, H, W, C)."""
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))  # (B, H-k+1, W-k+1, C, k, k)
    return win[:, ::stride, ::stride].transpose(0, 1, 2, 4, 5, 3)


def lc_forward(x, w, b, k, stride, kind):
    """y[n, i, j, m] = act(sum_{di, dj, c} x[n, i*s + di, j*s + dj, c] w[i, j, di, dj, c, m] + b[i, j, m])."""
    return activation(np.einsum("nijabc,ijabcm->nijm", patches(x, k, stride), w) + b, kind)


def lc_backward(x, w, y, dy, k, stride, kind, need_dx=True):
    """Returns (dz, dw, db, dx); dx by scattering each patch's gradient back (col2im)."""
    dz = dy * activation_grad_from_output(y, kind)
    dw = np.einsum("nijabc,nijm->ijabcm", patches(x, k, stride), dz)
    db = dz.sum(axis=0)
    dx = None
    if need_dx:
        dx = np.zeros_like(x)
        dpatch = np.einsum("nijm,ijabcm->nijabc", dz, w)
        ho, wo = dz.shape[1:3]
        for di in range(k):
            for dj in range(k):
                dx[:, di:di + stride * (ho - 1) + 1:stride, dj:dj + stride * (wo - 1) + 1:stride] += dpatch[:, :, :, di, dj]
    return dz, dw, db, dx


def pool_forward(x, k, stride, mode):
    """Returns (y, argmax): per-channel max or mean of each k x k window; argmax is the
    window-local index di * k + dj of the first maximum (zeros for ``mode="avg"``)."""
    p = patches(x, k, stride)  # (B, Ho, Wo, k, k, C)
    flat = p.reshape(*p.shape[:3], k * k, p.shape[-1])
    if mode == "avg":
        return flat.mean(axis=3, dtype=np.float64).astype(x.dtype), np.zeros(flat[:, :, :, 0].shape, np.int32)
    return flat.max(axis=3), flat.argmax(axis=3).astype(np.int32)


def pool_backward(dy, argmax, x_shape, k, stride, mode):
    dx = np.zeros(x_shape, dy.dtype)
    ho, wo = dy.shape[1:3]
    for di in range(k):
        for dj in range(k):
            g = dy / (k * k) if mode == "avg" else np.where(argmax == di * k + dj, dy, 0)
            dx[:, di:di + stride * (ho - 1) + 1:stride, dj:dj + stride * (wo - 1) + 1:stride] += g
    return dx
