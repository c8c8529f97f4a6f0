"""The update rules, as fused in-place Numba kernels over flat float32 slices.

These are the *only* implementations of each rule: single-process training
applies them to the whole parameter vector, parameter-server shards apply the
very same kernels to their slice.  Every kernel is element-wise, so applying
it to a slice gives bit-for-bit the same values as applying it to the whole.

Shapes: w, g and every state array are (n,) float32, C-contiguous, same n.
"""

from __future__ import annotations

import numba as nb
import numpy as np

# No fastmath: element-wise results must not depend on how a vector is sliced.
_JIT = dict(nogil=True, cache=True, parallel=True, error_model="numpy")


@nb.njit(**_JIT)
def sgd(w, g, lr, weight_decay):
    """``w -= lr * (g + weight_decay * w)``."""
    lr = np.float32(lr)
    wd = np.float32(weight_decay)
    if wd == 0:
        for i in nb.prange(w.size):
            w[i] -= lr * g[i]
    else:
        for i in nb.prange(w.size):
            w[i] -= lr * (g[i] + wd * w[i])


@nb.njit(**_JIT)
def momentum(w, g, v, lr, mu, nesterov, weight_decay):
    """Heavy-ball or Nesterov momentum (PyTorch's formulation).

    ``d = g + wd*w;  v = mu*v + d;  w -= lr * (d + mu*v if nesterov else v)``.
    """
    lr = np.float32(lr)
    mu = np.float32(mu)
    wd = np.float32(weight_decay)
    for i in nb.prange(w.size):
        d = g[i] + wd * w[i]
        vi = mu * v[i] + d
        v[i] = vi
        if nesterov:
            w[i] -= lr * (d + mu * vi)
        else:
            w[i] -= lr * vi


@nb.njit(**_JIT)
def adagrad(w, g, acc, lr, eps):
    """Adagrad as in DistBelief: ``G += g*g;  w -= lr * g / sqrt(G + eps)``."""
    lr = np.float32(lr)
    eps = np.float32(eps)
    for i in nb.prange(w.size):
        gi = g[i]
        a = acc[i] + gi * gi
        acc[i] = a
        w[i] -= lr * gi / np.sqrt(a + eps)


@nb.njit(nogil=True, cache=True, parallel=True)
def count_nonfinite(x):
    """Number of NaN or Inf entries in the flat float32 array ``x``."""
    n = 0
    for i in nb.prange(x.size):
        if not np.isfinite(x[i]):
            n += 1
    return n


@nb.njit(**_JIT)
def axpy(y, a, x):
    """``y += a * x`` (accumulating gradients)."""
    a = np.float32(a)
    for i in nb.prange(y.size):
        y[i] += a * x[i]
