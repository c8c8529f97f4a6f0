"""Max and average pooling over k x k windows, per channel, no padding, NHWC.

x (batch, H, W, C) -> y (batch, Ho, Wo, C), ``Ho = (H - k) // stride + 1`` (the same for
W), float32 C-contiguous.  Max pooling records in ``argmax`` (int32, the shape of y)
the window-local index ``di * k + dj`` of the maximum, the first one in (di, dj)
order on ties; backward sends each gradient there.  Average pooling ignores argmax.

Bands and row ranges work as in :mod:`dbnet.kernels.local`: x and dx hold input
rows ``[x_row0, x_row0 + x.shape[1])``, y, argmax and dy hold output rows
``[y_row0, y_row0 + y.shape[1])``, and ``rows = (i0, i1)`` are the output rows
computed, in full-layer coordinates.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from dbnet.kernels.local import _flat, output_size

_JIT = dict(nogil=True, cache=True, parallel=True)
MODES = ("max", "avg")


@nb.njit(**_JIT)
def _forward(x, y, argmax, k, s, x_row0, y_row0, i0, i1, is_max):
    B, _, _, C = x.shape
    Wo = y.shape[2]
    scale = np.float32(1.0 / (k * k))
    for n in nb.prange(B * (i1 - i0)):
        bb = n // (i1 - i0)
        i = i0 + n - bb * (i1 - i0)
        iy = i - y_row0
        hx = i * s - x_row0
        for j in range(Wo):
            for c in range(C):
                if is_max:
                    best = x[bb, hx, j * s, c]
                    at = 0
                    for di in range(k):
                        for dj in range(k):
                            v = x[bb, hx + di, j * s + dj, c]
                            if v > best:
                                best = v
                                at = di * k + dj
                    y[bb, iy, j, c] = best
                    argmax[bb, iy, j, c] = at
                else:
                    acc = np.float32(0.0)
                    for di in range(k):
                        for dj in range(k):
                            acc += x[bb, hx + di, j * s + dj, c]
                    y[bb, iy, j, c] = acc * scale


@nb.njit(**_JIT)
def _backward(dy, argmax, dx, k, s, x_row0, y_row0, i0, i1, h0, h1, is_max, accumulate):
    """Gathered per input element: the windows that cover it, in (i, j) order."""
    B, _, W, C = dx.shape
    Wo = dy.shape[2]
    scale = np.float32(1.0 / (k * k))
    nh = h1 - h0
    for n in nb.prange(B * nh):
        bb = n // nh
        hl = h0 + n - bb * nh
        h = x_row0 + hl
        ilo = max(i0, (h - k + s) // s)
        ihi = min(i1 - 1, h // s)
        for col in range(W):
            jlo = max(0, (col - k + s) // s)
            jhi = min(Wo - 1, col // s)
            for c in range(C):
                acc = np.float32(0.0)
                for i in range(ilo, ihi + 1):
                    iy = i - y_row0
                    for j in range(jlo, jhi + 1):
                        if is_max:
                            if argmax[bb, iy, j, c] == (h - i * s) * k + (col - j * s):
                                acc += dy[bb, iy, j, c]
                        else:
                            acc += dy[bb, iy, j, c] * scale
                if accumulate:
                    dx[bb, hl, col, c] += acc
                else:
                    dx[bb, hl, col, c] = acc


def _rows(x_shape, y_shape, k, stride, rows, x_row0, y_row0, mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if k < 1 or stride < 1:
        raise ValueError(f"need k >= 1 and stride >= 1, got k={k}, stride={stride}")
    B, Hx, W, C = x_shape
    Hy, Wo = y_shape[1], y_shape[2]
    if y_shape != (B, Hy, output_size(W, k, stride), C):
        raise ValueError(f"output shape {y_shape} does not fit input {x_shape} with k={k}, stride={stride}")
    i0, i1 = (y_row0, y_row0 + Hy) if rows is None else (int(rows[0]), int(rows[1]))
    if not y_row0 <= i0 <= i1 <= y_row0 + Hy:
        raise ValueError(f"rows {(i0, i1)} outside the output band [{y_row0}, {y_row0 + Hy})")
    if i1 > i0 and not (x_row0 <= i0 * stride and (i1 - 1) * stride + k <= x_row0 + Hx):
        raise ValueError(f"output rows [{i0}, {i1}) read input rows [{i0 * stride}, {(i1 - 1) * stride + k}), "
                         f"the x band holds [{x_row0}, {x_row0 + Hx})")
    return i0, i1


def _int32(name: str, a: np.ndarray, shape: tuple) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != np.int32 or a.shape != shape or not a.flags.c_contiguous:
        raise TypeError(f"{name}: expected a C-contiguous int32 array of shape {shape}")


def pool_forward(x: np.ndarray, y: np.ndarray, argmax: np.ndarray, k: int, stride: int, mode: str,
                 rows: tuple[int, int] | None = None, x_row0: int = 0, y_row0: int = 0) -> None:
    """Pool the output rows ``rows`` of x into y (and argmax, for ``mode="max"``).

    x: (batch, Hx, W, C) float32 from input row ``x_row0``; y: (batch, Hy, Wo, C) float32
    and argmax: (batch, Hy, Wo, C) int32 from output row ``y_row0``.  mode: "max" or "avg".
    """
    i0, i1 = _rows(x.shape, y.shape, k, stride, rows, x_row0, y_row0, mode)
    _flat("x", x, 4), _flat("y", y, 4), _int32("argmax", argmax, y.shape)
    _forward(x, y, argmax, k, stride, x_row0, y_row0, i0, i1, mode == "max")


def pool_backward(dy: np.ndarray, argmax: np.ndarray, dx: np.ndarray, k: int, stride: int, mode: str,
                  rows: tuple[int, int] | None = None, x_row0: int = 0, y_row0: int = 0,
                  accumulate: bool = False) -> None:
    """dx from the gradients ``dy`` of the output rows ``rows``.

    dy: (batch, Hy, Wo, C) float32 and argmax (int32, from :func:`pool_forward`) from output
    row ``y_row0``; dx: (batch, Hx, W, C) float32 from input row ``x_row0``.  With
    ``accumulate=False`` the whole dx band is overwritten (rows those outputs do not cover
    become 0); with ``accumulate=True`` the contribution is added.  Overlapping windows
    (stride < k) are summed per input element in (i, j) order by one thread: deterministic.
    """
    i0, i1 = _rows(dx.shape, dy.shape, k, stride, rows, x_row0, y_row0, mode)
    _flat("dy", dy, 4), _flat("dx", dx, 4), _int32("argmax", argmax, dy.shape)
    h0, h1 = (i0 * stride - x_row0, (i1 - 1) * stride + k - x_row0) if i1 > i0 else (0, 0)
    if not accumulate:
        dx[:, :h0] = 0.0
        dx[:, h1:] = 0.0
    _backward(dy, argmax, dx, k, stride, x_row0, y_row0, i0, i1, h0, h1, mode == "max", bool(accumulate))
