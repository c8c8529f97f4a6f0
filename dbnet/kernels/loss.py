"""Softmax + cross-entropy, fused: one pass for the loss, the gradient and the
number of correct predictions.  Numba, float32 in, float64 accumulation."""

from __future__ import annotations

import numba as nb
import numpy as np

_JIT = dict(nogil=True, cache=True, parallel=True, error_model="numpy")


@nb.njit(nogil=True, cache=True, inline="always")
def _row_max(z, i):
    """(max, argmax) of row i of z; the first maximum wins."""
    zmax = z[i, 0]
    arg = 0
    for j in range(1, z.shape[1]):
        if z[i, j] > zmax:
            zmax = z[i, j]
            arg = j
    return zmax, arg


@nb.njit(**_JIT)
def _softmax_xent(z, labels, dz, row_loss, row_hit, scale):
    n, m = z.shape
    for i in nb.prange(n):
        zmax, arg = _row_max(z, i)
        lab = labels[i]
        zlab = z[i, lab]  # read before dz (possibly z itself) is overwritten
        s = 0.0
        for j in range(m):
            e = np.exp(z[i, j] - zmax)
            dz[i, j] = e
            s += e
        row_loss[i] = np.log(s) - (zlab - zmax)
        row_hit[i] = 1 if arg == lab else 0
        inv = np.float32(scale / s)
        for j in range(m):
            dz[i, j] *= inv
        dz[i, lab] -= np.float32(scale)


@nb.njit(**_JIT)
def _softmax_xent_eval(z, labels, row_loss, row_hit):
    n, m = z.shape
    for i in nb.prange(n):
        zmax, arg = _row_max(z, i)
        s = 0.0
        for j in range(m):
            s += np.exp(z[i, j] - zmax)
        row_loss[i] = np.log(s) - (z[i, labels[i]] - zmax)
        row_hit[i] = 1 if arg == labels[i] else 0


def softmax_cross_entropy(
    z: np.ndarray,
    labels: np.ndarray,
    dz: np.ndarray | None,
    row_loss: np.ndarray,
    row_hit: np.ndarray,
) -> tuple[float, int]:
    """Mean cross-entropy of softmax(z) against ``labels`` and the gradient w.r.t. ``z``.

    z: (batch, n_classes) float32 logits.  labels: (batch,) int32 in [0, n_classes).
    dz: (batch, n_classes) float32, overwritten with ``(softmax(z) - onehot) / batch``;
    may be ``z`` itself (in place) or None for evaluation only.
    row_loss: (>= batch,) float64 and row_hit: (>= batch,) int32 scratch.
    Returns ``(loss summed over the batch, number of correct argmax predictions)``;
    the sums are taken in a fixed order, so they are reproducible.
    """
    n = z.shape[0]
    if dz is None:
        _softmax_xent_eval(z, labels, row_loss[:n], row_hit[:n])
    else:
        _softmax_xent(z, labels, dz, row_loss[:n], row_hit[:n], 1.0 / n)
    return float(row_loss[:n].sum()), int(row_hit[:n].sum())


# -- the softmax over classes split across model partitions (no logits gathered) -----------------------
# Partition p holds logits z (batch, u) of classes [u0, u0 + u).  The caller reduces between phases:
#   1. split_max:  red[0] = row max, red[1] = first argmax (global class)      -> Allreduce MAX of red[0]
#   2. split_sums: red[1] = candidate argmax (u0+j if this part holds the max, else n_classes: MIN-reduce),
#                  red[2] = sum exp(z - max), red[3] = z[label] if held here (else 0)  -> MIN / SUM
#   3. split_grad: dz = (softmax - onehot) * scale, row_loss, row_hit.
# With one partition the result equals softmax_cross_entropy's up to rounding (same float64 sums).

@nb.njit(**_JIT)
def split_max(z, red):
    """red[0, i] = max_j z[i, j] (-inf when this partition holds no class).  z: (n, u) float32; red: (4, >=n) f64."""
    n, u = z.shape
    for i in nb.prange(n):
        m = -np.inf
        for j in range(u):
            if z[i, j] > m:
                m = z[i, j]
        red[0, i] = m


@nb.njit(**_JIT)
def split_sums(z, labels, u0, n_classes, red):
    """After the MAX reduction of red[0]: fills red[1] (argmax candidate), red[2] (sum of exp), red[3] (label logit)."""
    n, u = z.shape
    for i in nb.prange(n):
        m = red[0, i]
        arg = n_classes
        s = 0.0
        for j in range(u):
            if arg == n_classes and z[i, j] == m:
                arg = u0 + j
            s += np.exp(z[i, j] - m)
        red[1, i] = arg
        red[2, i] = s
        lab = labels[i] - u0
        red[3, i] = z[i, lab] if 0 <= lab < u else 0.0


@nb.njit(**_JIT)
def split_grad(z, labels, u0, dz, red, row_loss, row_hit, scale):
    """After MIN of red[1] and SUM of red[2:4]: loss and hits per row, and dz (may be z) unless dz is empty."""
    n, u = z.shape
    for i in nb.prange(n):
        m, s = red[0, i], red[2, i]
        row_loss[i] = np.log(s) - (red[3, i] - m)
        row_hit[i] = 1 if int(red[1, i]) == labels[i] else 0
        if dz.shape[0]:
            inv = scale / s
            lab = labels[i] - u0
            for j in range(u):
                dz[i, j] = np.float32(np.exp(z[i, j] - m) * inv)
            if 0 <= lab < u:
                dz[i, lab] -= np.float32(scale)
