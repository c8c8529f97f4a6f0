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

from dbnet.kernels.local import _Kernel, _flat, _stack, band_rows, output_size

_JIT = dict(nogil=True, cache=True, parallel=True)
MODES = ("max", "avg")
U = nb.uint64  # unsigned flat indices: no negative-index wraparound, contiguous loads for LLVM


def _make_forward(CB, one, k, s, is_max):
    """The forward kernel for channel blocks of ``CB`` lanes (C a multiple of CB) and the
    window ``k``, stride ``s`` (compile-time constants: the window loops unroll).

    One work item per (example, output row); per output position and block of CB channels
    the window is scanned in (di, dj) order with strict ``>`` (ties: the first), holding
    the best values and their window indices in registers (the SLP vectorizer makes the
    CB lanes one vector).  Average pooling sums in (di, dj) order, then scales."""
    scale = np.float32(1.0 / (k * k))

    @nb.njit(**_JIT)
    def kernel(xf, yf, af, B, Hx, W, C, Hy, Wo, x_row0, y_row0, i0, i1):
        nr = i1 - i0
        xrow, yrow, sC = W * C, Wo * C, s * C
        for n in nb.prange(B * nr):
            bb = n // nr
            i = i0 + n - bb * nr
            xb = (bb * Hx + i * s - x_row0) * xrow
            yb = (bb * Hy + i - y_row0) * yrow
            acc = nb.carray(_stack(CB, np.float32), (CB,))
            at = nb.carray(_stack(CB, np.int32), (CB,))
            for j in range(Wo):
                for c0 in range(0, CB if one else C, CB):
                    xo = xb + j * sC + c0
                    yo = yb + j * C + c0
                    if is_max:
                        for cc in range(CB):
                            acc[cc] = xf[U(xo + cc)]
                            at[cc] = 0
                        for di in range(k):
                            for dj in range(k):
                                o = xo + di * xrow + dj * C
                                code = np.int32(di * k + dj)
                                for cc in range(CB):
                                    v = xf[U(o + cc)]
                                    better = v > acc[cc]
                                    acc[cc] = v if better else acc[cc]
                                    at[cc] = code if better else at[cc]
                        for cc in range(CB):
                            yf[U(yo + cc)] = acc[cc]
                            af[U(yo + cc)] = at[cc]
                    else:
                        for cc in range(CB):
                            acc[cc] = 0.0
                        for di in range(k):
                            for dj in range(k):
                                o = xo + di * xrow + dj * C
                                for cc in range(CB):
                                    acc[cc] += xf[U(o + cc)]
                        for cc in range(CB):
                            yf[U(yo + cc)] = acc[cc] * scale

    return kernel


def _make_backward(CB, one, k, s, is_max, accumulate):
    """The dx kernel for channel blocks of ``CB`` lanes, window ``k``, stride ``s``: a gather
    per input element.

    One work item per (example, input row h); each dx element sums, in registers, the
    gradients of the windows covering it in (i, j) order (output rows i covering h, then
    columns j covering the column), so the sum is fixed whatever the band, the row range
    or the thread count.  Columns go by residue r = col % s: the windows of column
    ``m * s + r`` are ``j in [m - d, m]``, ``d = (k - 1 - r) // s``, a compile-time count
    away from the edges."""
    scale = np.float32(1.0 / (k * k))

    @nb.njit(**_JIT)
    def kernel(dyf, af, dxf, B, Hx, W, C, Hy, Wo, x_row0, y_row0, i0, i1, h0, h1):
        nh = h1 - h0
        xrow, yrow = W * C, Wo * C
        for n in nb.prange(B * nh):
            bb = n // nh
            hl = h0 + n - bb * nh
            h = x_row0 + hl
            ilo = max(i0, (h - k + s) // s)
            ihi = min(i1 - 1, h // s)
            xb = (bb * Hx + hl) * xrow
            acc = nb.carray(_stack(CB, np.float32), (CB,))
            for r in range(s):  # a constant: unrolled, d a constant per residue
                d = (k - 1 - r) // s if k - 1 >= r else -1
                for m in range((W - r + s - 1) // s):
                    col = m * s + r
                    inner = m >= d and m < Wo  # all d + 1 windows j in [m - d, m] exist
                    jlo = max(0, m - d)
                    jhi = min(Wo - 1, m)
                    for c0 in range(0, CB if one else C, CB):
                        for cc in range(CB):
                            acc[cc] = 0.0
                        for i in range(ilo, ihi + 1):
                            code0 = (h - i * s) * k + col
                            yb = (bb * Hy + i - y_row0) * yrow + c0
                            if inner:
                                for t in range(d + 1):
                                    j = m - d + t
                                    o = yb + j * C
                                    code = np.int32(code0 - j * s)
                                    if is_max:  # (inlined: a nested dispatcher would defeat the disk cache)
                                        for cc in range(CB):
                                            g = dyf[U(o + cc)]
                                            acc[cc] += g if af[U(o + cc)] == code else np.float32(0.0)
                                    else:
                                        for cc in range(CB):
                                            acc[cc] += dyf[U(o + cc)] * scale
                            else:
                                for j in range(jlo, jhi + 1):
                                    o = yb + j * C
                                    code = np.int32(code0 - j * s)
                                    if is_max:
                                        for cc in range(CB):
                                            g = dyf[U(o + cc)]
                                            acc[cc] += g if af[U(o + cc)] == code else np.float32(0.0)
                                    else:
                                        for cc in range(CB):
                                            acc[cc] += dyf[U(o + cc)] * scale
                        xo = xb + col * C + c0
                        for cc in range(CB):
                            if accumulate:
                                dxf[U(xo + cc)] += acc[cc]
                            else:
                                dxf[U(xo + cc)] = acc[cc]

    return kernel


_F, _A, _I = nb.float32[::1], nb.int32[::1], nb.int64
_KERNELS: dict = {}  # (forward?, lanes, lanes == C?, k, stride, max?, accumulate?) -> kernel, compiled on first use


def _lanes(C: int) -> int:
    """Channels per register block: C's largest power-of-two divisor, at most 16; and
    whether that is all of C (then the loop over blocks is a compile-time single pass)."""
    lanes = next(t for t in (16, 8, 4, 2, 1) if C % t == 0)
    return lanes, lanes == C


def _kernel(forward: bool, C: int, k: int, s: int, is_max: bool, accumulate: bool = False) -> _Kernel:
    key = forward, *_lanes(C), k, s, is_max, accumulate and not forward
    if key not in _KERNELS:
        _KERNELS[key] = _Kernel(_make_forward(*key[1:6]), (_F, _F, _A) + (_I,) * 10) if forward else \
            _Kernel(_make_backward(*key[1:]), (_F, _A, _F) + (_I,) * 12)
    return _KERNELS[key]


def _rows(x_shape, y_shape, k, stride, rows, x_row0, y_row0, mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if k < 1 or stride < 1:
        raise ValueError(f"need k >= 1 and stride >= 1, got k={k}, stride={stride}")
    B, Hx, W, C = x_shape
    Hy = y_shape[1]
    if y_shape != (B, Hy, output_size(W, k, stride), C):
        raise ValueError(f"output shape {y_shape} does not fit input {x_shape} with k={k}, stride={stride}")
    return band_rows(Hx, Hy, k, stride, rows, x_row0, y_row0)


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
    xf, yf = _flat("x", x, 4), _flat("y", y, 4)
    _int32("argmax", argmax, y.shape)
    if i1 > i0:
        _kernel(True, x.shape[3], k, stride, mode == "max")(
            xf, yf, argmax.reshape(-1), *x.shape, y.shape[1], y.shape[2], x_row0, y_row0, i0, i1)


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
    dyf, dxf = _flat("dy", dy, 4), _flat("dx", dx, 4)
    _int32("argmax", argmax, dy.shape)
    h0, h1 = (i0 * stride - x_row0, (i1 - 1) * stride + k - x_row0) if i1 > i0 else (0, 0)
    if not accumulate:
        dx[:, :h0] = 0.0
        dx[:, h1:] = 0.0
    if h1 > h0:
        _kernel(False, dx.shape[3], k, stride, mode == "max", bool(accumulate))(
            dyf, argmax.reshape(-1), dxf, *dx.shape, dy.shape[1], dy.shape[2], x_row0, y_row0, i0, i1, h0, h1)
