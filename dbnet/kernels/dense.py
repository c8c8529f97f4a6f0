"""Fully connected layer, forward and backward.

The matrix products go to BLAS (``np.matmul`` with ``out=``, which passes
transposed views to sgemm without copying); everything element-wise is a
fused Numba kernel.  No allocation: every output is a caller-owned buffer.

Shapes: x (batch, n_in), W (n_in, n_out), b (n_out,), y (batch, n_out), all
float32 and C-contiguous (W may be a view into the flat parameter vector).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from dbnet.kernels.activations import activation_backward, bias_activation


@nb.njit(nogil=True, cache=True, parallel=True)
def _column_sums(d, out):
    n, m = d.shape
    n_chunks = min(m, 64)
    for c in nb.prange(n_chunks):
        j0 = c * m // n_chunks
        j1 = (c + 1) * m // n_chunks
        for j in range(j0, j1):
            out[j] = 0.0
        for i in range(n):
            for j in range(j0, j1):
                out[j] += d[i, j]


def column_sums(d: np.ndarray, out: np.ndarray) -> None:
    """``out[j] = sum_i d[i, j]``.  d: (batch, n) float32; out: (n,) float32.

    Each column is summed by one thread in row order, so the result does not
    depend on the number of threads.
    """
    _column_sums(d, out)


def dense_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray, activation: str) -> None:
    """``y = act(x @ W + b)``, written into ``y``."""
    np.matmul(x, w, out=y)
    bias_activation(y, b, activation)


def dense_backward(
    x: np.ndarray,
    w: np.ndarray,
    y: np.ndarray,
    dy: np.ndarray,
    dw: np.ndarray,
    db: np.ndarray,
    dx: np.ndarray | None,
    activation: str,
) -> None:
    """Gradients of a dense layer given ``dy = dLoss/dy``.

    ``dy`` is overwritten with ``dLoss/dz`` (z the pre-activation).  Writes
    ``dw = x.T @ dz`` (n_in, n_out), ``db = sum_rows(dz)`` (n_out,) and, unless
    ``dx`` is None (the first layer needs no input gradient), ``dx = dz @ W.T``.
    ``dx`` must not alias ``dy``.
    """
    activation_backward(dy, y, activation)
    np.matmul(x.T, dy, out=dw)
    column_sums(dy, db)
    if dx is not None:
        np.matmul(dy, w.T, out=dx)
