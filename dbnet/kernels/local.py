"""Locally connected (LC) layer: untied k x k filters, forward and backward.

Layouts (fixed; the model and the model-parallel code depend on them), all
float32 and C-contiguous:

* x  (batch, H, W, C_in)            activations, NHWC
* w  (Ho, Wo, k, k, C_in, C_out)    one filter bank per output position
* b  (Ho, Wo, C_out)                one bias per output position and map
* y  (batch, Ho, Wo, C_out)         ``Ho = (H - k) // stride + 1``, the same for Wo

``y[n, i, j, m] = act(sum_{di, dj, c} x[n, i*s + di, j*s + dj, c] * w[i, j, di, dj, c, m] + b[i, j, m])``

**Bands.**  Every kernel works on a band of rows, so that a model partition
can hold only its rows and compute the interior while halos are in flight:

* ``x_row0``: x (and dx) hold input rows ``[x_row0, x_row0 + x.shape[1])`` of
  the full image; all columns.
* ``y_row0``: w, b, y (and dw, db, dy) hold output rows ``[y_row0, y_row0 + y.shape[1])``
  of the full layer.
* ``rows = (i0, i1)``: the output rows computed, in full-layer coordinates
  (default: all of y's rows).  The x band must hold the input rows they read,
  ``[i0 * s, (i1 - 1) * s + k)``.

A row computed from a band is bit-identical to the same row of a full call:
every output element is summed in the same fixed order whatever the band,
the row range or the number of threads.

**Speed.**  Per output position the work is a (batch x k*k*C_in) @
(k*k*C_in x C_out) product with a small C_out.  The kernels hold a tile of
accumulators in registers and keep the position's weights in L1 while the
batch streams past them; nothing is gathered into an im2col buffer:

* forward and dx put 16 examples in the vector lanes (AVX-512), reading x and
  dz from copies transposed once per call to (row, column, example) order
  (module-owned scratch, allocated once per thread and reused; see
  :func:`_scratch`).  The forward tiles up to 16 maps x 16 examples and applies
  the activation in a separate vectorized pass; dx accumulates an input row
  in a row buffer, tiled over each position's patch row, so no tile hangs over
  a patch's edge;
* dw puts 16 consecutive entries of a patch row in the lanes (k*C_in >= 16,
  read straight from x) x up to 16 maps, else 8 patch entries x the maps.

Those register tiles need LLVM's SLP vectorizer, which Numba leaves off by
default (numba#8705); :class:`_Kernel` compiles these kernels, and only these,
with it on, and the tests check them against the numpy twins.  The map count
and tile sizes are compile-time constants, one compiled kernel per
combination used; any C_out works (tiles of its largest divisor <= 16).
"""

from __future__ import annotations

import threading

import numba as nb
import numpy as np
from numba import types
from numba.core import cgutils
from numba.core.compiler_lock import global_compiler_lock
from numba.extending import intrinsic

from dbnet.kernels.activations import ACTIVATIONS

_JIT = dict(nogil=True, cache=True, parallel=True,
            fastmath={"contract", "nnan", "ninf", "nsz", "arcp"})  # FMA, but no reassociation: sums in written order
_ACT = {name: code for code, name in enumerate(ACTIVATIONS)}  # sigmoid 0, tanh 1, relu 2, linear 3
U = nb.uint64  # unsigned indices: Numba then emits no negative-index wraparound, and LLVM sees contiguous loads


class _Kernel:
    """A Numba kernel compiled once, for one signature, with the SLP vectorizer on
    and the loop vectorizer off (it vectorized the short runtime loops around the
    register tile, with gathers).

    Numba reads ``config.SLP_VECTORIZE`` and ``LOOP_VECTORIZE`` when it builds its
    pass pipeline, so the flags are set only while this kernel compiles (under Numba's compiler
    lock, so no other compilation sees it).  Further compilation is disabled:
    a call with other argument types raises instead of silently compiling a
    slow version.
    """

    def __init__(self, fn, sig):
        self.fn, self.sig, self.ready = fn, sig, False

    def __call__(self, *args):
        if not self.ready:
            with global_compiler_lock:
                if not self.ready:  # or another thread compiled it while this one waited
                    old = nb.config.SLP_VECTORIZE, nb.config.LOOP_VECTORIZE
                    nb.config.SLP_VECTORIZE, nb.config.LOOP_VECTORIZE = 1, 0
                    try:
                        self.fn.compile(self.sig)
                    finally:
                        nb.config.SLP_VECTORIZE, nb.config.LOOP_VECTORIZE = old
                    self.fn.disable_compile()
                    self.ready = True
        return self.fn(*args)


@intrinsic
def _stack(typingctx, n, dtype):
    """A pointer to ``n`` (a literal) elements on the stack: LLVM promotes them to registers."""
    if not isinstance(n, types.IntegerLiteral):
        return None
    size, ty = n.literal_value, dtype.dtype

    def codegen(context, builder, sig, args):
        return cgutils.alloca_once(builder, context.get_value_type(ty), size=size)

    return types.CPointer(ty)(n, dtype), codegen


@intrinsic
def _float_from_bits(typingctx, i):
    """The float32 whose bit pattern is the int32 ``i``."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return types.float32(types.int32), codegen


@nb.njit(nogil=True, cache=True, inline="always", fastmath={"contract", "nnan", "ninf", "nsz", "arcp"})
def _exp(v):
    """exp(v) in float32, within 2 ulp, as straight-line arithmetic that LLVM vectorizes
    (Cephes' expf: v = n ln2 + r, |r| <= ln2 / 2, a degree-7 polynomial, then 2^n from bits)."""
    v = min(max(v, np.float32(-87.0)), np.float32(88.0))
    n = np.floor(v * np.float32(1.44269504088896341) + np.float32(0.5))
    r = v - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * _float_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


@nb.njit(nogil=True, cache=True, inline="always",
         fastmath={"contract", "nnan", "ninf", "nsz", "arcp"})
def _act(v, code):
    if code == 0:
        return np.float32(1.0) / (np.float32(1.0) + _exp(-v))
    if code == 1:
        return np.tanh(v)
    if code == 2:
        return v if v > np.float32(0.0) else np.float32(0.0)
    return v


# ------------------------------------------------------------------ forward

@nb.njit(**_JIT)
def _transpose_x(xf, xt, B, Bp, Hx, xrow, h0, h1):
    """``xt[h - h0, t, n] = x[n, h, t]`` (t = column * C_in + c) for the band rows
    ``h0 <= h < h1``; lanes ``B <= n < Bp`` are 0.  xt: (h1 - h0, W * C_in, Bp)."""
    xB = Hx * xrow
    for hl in nb.prange(h1 - h0):
        dst = hl * xrow * Bp
        for bb in range(B):
            src = bb * xB + (h0 + hl) * xrow
            for t in range(xrow):
                xt[U(dst + t * Bp + bb)] = xf[U(src + t)]
        for t in range(xrow):
            for bb in range(B, Bp):
                xt[U(dst + t * Bp + bb)] = 0.0


def _make_forward(MC, MT):
    """The forward kernel for ``MC`` maps (0: any) in tiles of ``MT`` maps (dividing C_out).

    One work item per output position; tiles of MT maps x 16 examples (the lanes, read
    from the transposed x band ``xt``, whose row 0 is the band's row ``xh0``).  Each output
    is ``bias + sum`` over the patch in (di, dj, c) order, one chain; :func:`_activate` then
    applies the activation in a second pass over the rows (inline, the SLP vectorizer
    made it only 4 lanes wide)."""
    MT16 = MT * 16

    @nb.njit(**_JIT)
    def kernel(xt, wf, bf, yf, B, Bp, Hx, Wx, C, Hy, Wo, M_, k, s, x_row0, y_row0, i0, i1, xh0):
        M = MC if MC else M_
        kC = k * C
        P = k * kC
        xrow = Wx * C
        yB = Hy * Wo * M
        sC = s * C
        for n in nb.prange((i1 - i0) * Wo):
            i = i0 + n // Wo
            j = n - (n // Wo) * Wo
            pos = (i - y_row0) * Wo + j
            acc = nb.carray(_stack(MT16, np.float32), (MT, 16))
            xv = nb.carray(_stack(16, np.float32), (16,))
            for b0 in range(0, Bp, 16):
                for m0 in range(0, M, MT):
                    bo = pos * M + m0
                    for mm in range(MT):
                        bv = bf[U(bo + mm)]
                        for ll in range(16):
                            acc[mm, ll] = bv
                    for di in range(k):
                        xd = ((i * s + di - xh0) * xrow + j * sC) * Bp + b0
                        wd = (pos * P + di * kC) * M + m0
                        for q in range(kC):
                            for ll in range(16):
                                xv[ll] = xt[U(xd + q * Bp + ll)]
                            for mm in range(MT):
                                wv = wf[U(wd + q * M + mm)]
                                for ll in range(16):
                                    acc[mm, ll] += wv * xv[ll]
                    for ll in range(min(16, B - b0)):
                        yo = (b0 + ll) * yB + bo
                        for mm in range(MT):
                            yf[U(yo + mm)] = acc[mm, ll]

    return kernel


@nb.njit(nogil=True, cache=True, parallel=True, fastmath={"contract", "nnan", "ninf", "nsz", "arcp"})
def _activate(yf, B, Hy, row, r0, r1, act):
    """In place, ``y = act(y)`` on the band rows ``[r0, r1)``; compiled with Numba's usual
    loop vectorizer (16 lanes here)."""
    for n in nb.prange(B * (r1 - r0)):
        bb = n // (r1 - r0)
        o = (bb * Hy + r0 + n - bb * (r1 - r0)) * row
        if act == 0:  # one loop per activation, each vectorized
            for e in range(o, o + row):
                yf[U(e)] = _act(yf[U(e)], 0)
        elif act == 1:
            for e in range(o, o + row):
                yf[U(e)] = _act(yf[U(e)], 1)
        elif act == 2:
            for e in range(o, o + row):
                yf[U(e)] = _act(yf[U(e)], 2)


# ------------------------------------------------------------- dz = dy * act'

@nb.njit(**_JIT)
def _act_backward(dyf, yf, B, Hy, Wo, M, r0, r1, act):
    row = Wo * M
    one, zero = np.float32(1.0), np.float32(0.0)
    for n in nb.prange(B * (r1 - r0)):
        bb = n // (r1 - r0)
        o = (bb * Hy + r0 + n - bb * (r1 - r0)) * row
        for e in range(o, o + row):
            v = yf[U(e)]
            if act == 0:
                dyf[U(e)] *= v * (one - v)
            elif act == 1:
                dyf[U(e)] *= one - v * v
            elif act == 2:
                if not v > zero:
                    dyf[U(e)] = zero


# ------------------------------------------------------------ dw, db

def _make_weights(MC, MT):
    """The dw, db kernel for ``MC`` maps (0: any) in tiles of ``MT`` maps (dividing C_out).

    One work item per output position; tiles of 8 weight rows x MT maps (the lanes),
    each summed over the batch in order.  The patch is read from the transposed x band
    ``xt`` (row 0 = the band's row ``xh0``): a weight row's inputs for consecutive
    examples are adjacent there."""
    MT8 = MT * 8

    @nb.njit(**_JIT)
    def kernel(xt, dzf, dwf, dbf, B, Bp, Hx, Wx, C, Hy, Wo, M_, k, s, x_row0, y_row0, i0, i1, xh0):
        M = MC if MC else M_
        kC = k * C
        P = k * kC
        xrow = Wx * C
        yB = Hy * Wo * M
        sC = s * C
        P8 = P - P % 8
        for n in nb.prange((i1 - i0) * Wo):
            i = i0 + n // Wo
            j = n - (n // Wo) * Wo
            pos = (i - y_row0) * Wo + j
            xo = (i * s - xh0) * xrow + j * sC  # the patch's top-left in xt's rows
            acc = nb.carray(_stack(MT8, np.float32), (8, MT))
            dv = nb.carray(_stack(MT, np.float32), (MT,))
            off = nb.carray(_stack(8, np.int64), (8,))
            for m0 in range(0, M, MT):
                zo = pos * M + m0
                for p0 in range(0, P8, 8):
                    for rr in range(8):
                        di = (p0 + rr) // kC
                        off[rr] = (xo + di * xrow + (p0 + rr - di * kC)) * Bp
                    for rr in range(8):
                        for mm in range(MT):
                            acc[rr, mm] = 0.0
                    for bb in range(B):
                        for mm in range(MT):
                            dv[mm] = dzf[U(bb * yB + zo + mm)]
                        for rr in range(8):
                            a = xt[U(off[rr] + bb)]
                            for mm in range(MT):
                                acc[rr, mm] += a * dv[mm]
                    for rr in range(8):
                        wo = (pos * P + p0 + rr) * M + m0
                        for mm in range(MT):
                            dwf[U(wo + mm)] = acc[rr, mm]
                for p in range(P8, P + 1):  # the last rows of w one at a time; p == P is the bias
                    di = p // kC
                    o = (xo + di * xrow + (p - di * kC)) * Bp
                    for mm in range(MT):
                        acc[0, mm] = 0.0
                    for bb in range(B):
                        a = xt[U(o + bb)] if p < P else np.float32(1.0)
                        for mm in range(MT):
                            acc[0, mm] += a * dzf[U(bb * yB + zo + mm)]
                    if p < P:
                        wo = (pos * P + p) * M + m0
                        for mm in range(MT):
                            dwf[U(wo + mm)] = acc[0, mm]
                    else:
                        for mm in range(MT):
                            dbf[U(zo + mm)] = acc[0, mm]

    return kernel


def _make_weights_q(MC, MT):
    """The dw, db kernel for patch rows of at least 16 (k * C_in >= 16), ``MC`` maps (0: any) in
    tiles of ``MT``: tiles of MT maps x 16 consecutive entries of a patch row (the lanes,
    contiguous in x), each summed over the batch in order.  The last tile of a patch row
    starts at k*C_in - 16 and recomputes a few entries, bit for bit the same."""
    MT16 = MT * 16

    @nb.njit(**_JIT)
    def kernel(xf, dzf, dwf, dbf, B, Hx, Wx, C, Hy, Wo, M_, k, s, x_row0, y_row0, i0, i1):
        M = MC if MC else M_
        kC = k * C
        P = k * kC
        xrow = Wx * C
        xB = Hx * xrow
        yB = Hy * Wo * M
        nQ = (kC + 15) // 16
        for n in nb.prange((i1 - i0) * Wo):
            i = i0 + n // Wo
            j = n - (n // Wo) * Wo
            pos = (i - y_row0) * Wo + j
            xo = (i * s - x_row0) * xrow + j * s * C
            acc = nb.carray(_stack(MT16, np.float32), (MT, 16))
            xv = nb.carray(_stack(16, np.float32), (16,))
            for m0 in range(0, M, MT):
                zo = pos * M + m0
                for di in range(k):
                    for qb in range(nQ):
                        q0 = min(qb * 16, kC - 16)
                        xd = xo + di * xrow + q0
                        for mm in range(MT):
                            for ll in range(16):
                                acc[mm, ll] = 0.0
                        for bb in range(B):
                            for ll in range(16):
                                xv[ll] = xf[U(bb * xB + xd + ll)]
                            for mm in range(MT):
                                a = dzf[U(bb * yB + zo + mm)]
                                for ll in range(16):
                                    acc[mm, ll] += a * xv[ll]
                        wo = (pos * P + di * kC + q0) * M + m0
                        for ll in range(16):
                            for mm in range(MT):
                                dwf[U(wo + ll * M + mm)] = acc[mm, ll]
                for mm in range(MT):
                    acc[0, mm] = 0.0
                for bb in range(B):
                    for mm in range(MT):
                        acc[0, mm] += dzf[U(bb * yB + zo + mm)]
                for mm in range(MT):
                    dbf[U(zo + mm)] = acc[0, mm]

    return kernel


# ------------------------------------------------------------------- dx

@nb.njit(**_JIT)
def _transpose_dz(dzf, zt, B, Bp, Hy, Wo, M, r0, r1):
    """``zt[(r - r0, j), m, n] = dz[n, r, j, m]`` for the band rows ``r0 <= r < r1``; lanes
    ``B <= n < Bp`` are 0.  zt: ((r1 - r0) * Wo, M, Bp), examples innermost."""
    row = Wo * M
    yB = Hy * row
    for n in nb.prange((r1 - r0) * Wo):
        src = r0 * row + n * M
        dst = n * M * Bp
        for bb in range(B):
            for m in range(M):
                zt[U(dst + m * Bp + bb)] = dzf[U(bb * yB + src + m)]
        for m in range(M):
            for bb in range(B, Bp):
                zt[U(dst + m * Bp + bb)] = 0.0


def _make_input(MC, RB):
    """The dx kernel with ``MC`` maps (0: any, read from the arguments) and ``RB`` patch
    rows per register tile (a compile-time constant each, so that the weight offsets are).

    One work item per (input row, 16 examples): its 16 lanes are examples, read from
    the transposed dz (zt).  The row's gradient is accumulated in a row buffer (the
    caller's scratch ``rbuf``, (row, example block, column * C_in + c, 16 lanes)): for each
    output row i reading the input row (ascending), each position j (ascending), its k*C_in
    patch-row weights in tiles of RB rows x 16 lanes: load the tile, add
    ``dz[n, i, j, m] * w[i, j, di, q, m]`` for m = 0, 1, ..., store it.  So each
    ``dx[n, h, col, c]`` is one chain of sums over (i, j, m) in that order, whatever the band,
    the row range or the threads.  A last tile past the patch row (k*C_in not a multiple
    of RB) adds weights times 0 to the buffer's next rows: exact."""
    RB16 = RB * 16

    @nb.njit(**_JIT)
    def kernel(wf, zt, rbuf, dxf, B, Bp, Hx, Wx, C, Hy, Wo, M_, k, s, x_row0, y_row0, i0, i1, h0, h1,
               accumulate):
        M = MC if MC else M_
        kC = k * C
        P = k * kC
        xrow = Wx * C
        xB = Hx * xrow
        sC = s * C
        nV = Bp // 16
        nQ = (kC + RB - 1) // RB
        rlen = (xrow + RB) * 16
        for n in nb.prange((h1 - h0) * nV):
            hl = h0 + n // nV
            b0 = (n - (hl - h0) * nV) * 16
            h = x_row0 + hl
            ro = n * rlen
            ilo = max(i0, (h - k + s) // s)  # ceil((h - k + 1) / s) for h - k + 1 > -s
            ihi = min(i1 - 1, h // s)
            acc = nb.carray(_stack(RB16, np.float32), (RB, 16))
            zv = nb.carray(_stack(16, np.float32), (16,))
            off = nb.carray(_stack(RB, np.int64), (RB,))
            mk = nb.carray(_stack(RB, np.float32), (RB,))
            for e in range(ro, ro + rlen):
                rbuf[U(e)] = 0.0
            for i in range(ilo, ihi + 1):
                di = h - i * s
                for j in range(Wo):
                    wb = (((i - y_row0) * Wo + j) * P + di * kC) * M
                    zb = (((i - i0) * Wo + j) * M) * Bp + b0
                    for qb in range(nQ):
                        q0 = qb * RB
                        r = ro + (j * sC + q0) * 16
                        for rr in range(RB):
                            for ll in range(16):
                                acc[rr, ll] = rbuf[U(r + rr * 16 + ll)]
                        if q0 + RB <= kC:
                            for m in range(M):
                                for ll in range(16):
                                    zv[ll] = zt[U(zb + m * Bp + ll)]
                                for rr in range(RB):
                                    wv = wf[U(wb + (q0 + rr) * M + m)]
                                    for ll in range(16):
                                        acc[rr, ll] += wv * zv[ll]
                        else:  # the patch row's last, partial tile
                            for rr in range(RB):
                                q = min(q0 + rr, kC - 1)
                                off[rr] = wb + q * M
                                mk[rr] = np.float32(1.0) if q == q0 + rr else np.float32(0.0)
                            for m in range(M):
                                for ll in range(16):
                                    zv[ll] = zt[U(zb + m * Bp + ll)]
                                for rr in range(RB):
                                    wv = wf[U(off[rr] + m)] * mk[rr]
                                    for ll in range(16):
                                        acc[rr, ll] += wv * zv[ll]
                        for rr in range(RB):
                            for ll in range(16):
                                rbuf[U(r + rr * 16 + ll)] = acc[rr, ll]
            for ll in range(min(16, B - b0)):
                o = (b0 + ll) * xB + hl * xrow
                for t in range(xrow):
                    v = rbuf[U(ro + t * 16 + ll)]
                    if accumulate:
                        dxf[U(o + t)] += v
                    else:
                        dxf[U(o + t)] = v

    return kernel


# ------------------------------------------------------- compiled signatures

_F = nb.float32[::1]
_I = nb.int64
_GEOM = (_I,) * 13  # B, Hx, Wx, C, Hy, Wo, M, k, s, x_row0, y_row0, i0, i1
_FORWARD: dict = {}  # (maps or 0, tile maps) -> kernel, compiled on first use
_TRANSPOSE_X = _Kernel(_transpose_x, (_F, _F) + (_I,) * 6)


def _forward_kernel(M: int) -> _Kernel:
    MC = M if M in (8, 16, 32) else 0
    MT = next(t for t in (16, 8, 12, 10, 6, 4, 5, 7, 3, 2, 1) if M % t == 0)
    key = MC, MT
    if key not in _FORWARD:
        _FORWARD[key] = _Kernel(_make_forward(MC, MT), (_F, _F, _F, _F) + (_I,) * 15)
    return _FORWARD[key]
_WEIGHTS: dict = {}  # (maps or 0, tile maps) -> kernel, compiled on first use


def _tile(M: int) -> int:
    """Maps per tile: 16 or 8 where they divide C_out, else C_out's largest divisor <= 16."""
    return next(t for t in range(16, 0, -1) if M % t == 0 and (t in (16, 8) or M % 8))


def _weights_kernel(M: int, long_rows: bool) -> _Kernel:
    """The dw kernel: :func:`_make_weights_q` for patch rows of 16 or more, else :func:`_make_weights`."""
    key = M if M in (8, 16, 32) else 0, _tile(M), long_rows
    if key not in _WEIGHTS:
        _WEIGHTS[key] = _Kernel(_make_weights_q(*key[:2]), (_F, _F, _F, _F) + (_I,) * 13) if long_rows else \
            _Kernel(_make_weights(*key[:2]), (_F, _F, _F, _F) + (_I,) * 15)
    return _WEIGHTS[key]
_INPUT: dict = {}  # (maps or 0, tile rows) -> kernel, compiled on first use
_TRANSPOSE_DZ = _Kernel(_transpose_dz, (_F, _F) + (_I,) * 7)


def _input_kernel(M: int, kC: int) -> _Kernel:
    MC = M if M in (8, 16, 32) else 0
    RB = next((r for r in (8, 10, 6, 12, 9, 7, 5) if kC % r == 0), 8)
    key = MC, RB
    if key not in _INPUT:
        _INPUT[key] = _Kernel(_make_input(MC, RB), (_F, _F, _F, _F) + (_I,) * 16 + (nb.boolean,))
    return _INPUT[key]


_SCRATCH = threading.local()


def _scratch(name: str, size: int) -> np.ndarray:
    """A float32 scratch vector of at least ``size`` elements, owned by this module and the
    calling thread: allocated on first use and when a larger one is needed, otherwise reused."""
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    buf = bufs.get(name)
    if buf is None or buf.size < size:
        buf = bufs[name] = np.empty(max(size, 1), np.float32)
    return buf
_ACT_BACKWARD = _Kernel(_act_backward, (_F, _F) + (_I,) * 7)


# ------------------------------------------------------------------- API

def output_size(n: int, k: int, stride: int) -> int:
    """Outputs of a k-wide window at ``stride`` over ``n`` inputs, no padding: ``(n - k) // stride + 1``."""
    return (n - k) // stride + 1


def _flat(name: str, a: np.ndarray, ndim: int) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != ndim or not a.flags.c_contiguous:
        got = f"{a.dtype} {a.shape}{'' if a.flags.c_contiguous else ' non-contiguous'}" \
            if isinstance(a, np.ndarray) else type(a).__name__
        raise TypeError(f"{name}: expected a C-contiguous float32 array with {ndim} dimensions, got {got}")
    return a.reshape(-1)


def _expect(name: str, a: np.ndarray, shape: tuple) -> None:
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")


def _geometry(x, y, w, k, stride, rows, x_row0, y_row0):
    """Checks the band arithmetic; returns the kernel's 13 geometry ints."""
    if k < 1 or stride < 1:
        raise ValueError(f"need k >= 1 and stride >= 1, got k={k}, stride={stride}")
    B, Hx, Wx, C = x.shape
    _, Hy, Wo, M = y.shape
    if y.shape[0] != B:
        raise ValueError(f"batch: x has {B} examples, the output {y.shape[0]}")
    if Wo != output_size(Wx, k, stride):
        raise ValueError(f"width: {Wx} input columns give {output_size(Wx, k, stride)} outputs for "
                         f"k={k}, stride={stride}, the output has {Wo}")
    _expect("w", w, (Hy, Wo, k, k, C, M))
    i0, i1 = band_rows(Hx, Hy, k, stride, rows, x_row0, y_row0)
    return B, Hx, Wx, C, Hy, Wo, M, k, stride, x_row0, y_row0, i0, i1


def band_rows(Hx: int, Hy: int, k: int, stride: int, rows, x_row0: int, y_row0: int) -> tuple[int, int]:
    """The output rows ``(i0, i1)`` to compute (``rows``, default the whole output band), checked against
    the bands: inside the output band ``[y_row0, y_row0 + Hy)``, reading only input rows of
    ``[x_row0, x_row0 + Hx)``.  Shared by the LC and pooling kernels."""
    i0, i1 = (y_row0, y_row0 + Hy) if rows is None else (int(rows[0]), int(rows[1]))
    if not y_row0 <= i0 <= i1 <= y_row0 + Hy:
        raise ValueError(f"rows {(i0, i1)} outside the output band [{y_row0}, {y_row0 + Hy})")
    if i1 > i0 and not (x_row0 <= i0 * stride and (i1 - 1) * stride + k <= x_row0 + Hx):
        raise ValueError(f"output rows [{i0}, {i1}) read input rows [{i0 * stride}, {(i1 - 1) * stride + k}), "
                         f"the x band holds [{x_row0}, {x_row0 + Hx})")
    return i0, i1


def lc_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray, k: int, stride: int,
               activation: str, rows: tuple[int, int] | None = None, x_row0: int = 0, y_row0: int = 0) -> None:
    """``y = act(LC(x; w) + b)`` for the output rows ``rows``, written into ``y``.

    x: (batch, Hx, W, C_in) float32, input rows ``[x_row0, x_row0 + Hx)`` of the image.
    w: (Hy, Wo, k, k, C_in, C_out), b: (Hy, Wo, C_out), y: (batch, Hy, Wo, C_out), all
    float32, output rows ``[y_row0, y_row0 + Hy)`` of the layer.
    rows: (i0, i1) full-layer output rows to compute (default all of y's); other rows of y
    are left alone.  activation: one of :data:`~dbnet.kernels.activations.ACTIVATIONS`.
    """
    g = _geometry(x, y, w, k, stride, rows, x_row0, y_row0)
    _expect("b", b, y.shape[1:])
    B, Hx, Wx, C, Hy, Wo, M = g[:7]
    i0, i1 = g[11], g[12]
    if i1 <= i0:
        return
    h0, h1 = i0 * stride - x_row0, (i1 - 1) * stride + k - x_row0  # the band rows read
    Bp = -(-B // 16) * 16
    xt = _scratch("xt", (h1 - h0) * Wx * C * Bp)
    _TRANSPOSE_X(_flat("x", x, 4), xt, B, Bp, Hx, Wx * C, h0, h1)
    yf = _flat("y", y, 4)
    _forward_kernel(M)(xt, _flat("w", w, 6), _flat("b", b, 3), yf, B, Bp, *g[1:], h0 + x_row0)
    if activation != "linear":
        _activate(yf, B, Hy, Wo * M, i0 - y_row0, i1 - y_row0, _ACT[activation])


def lc_activation_backward(dy: np.ndarray, y: np.ndarray, activation: str,
                           rows: tuple[int, int] | None = None, y_row0: int = 0) -> None:
    """In place, for the output rows ``rows``: ``dy *= act'`` from the layer's output ``y``, so
    ``dy`` then holds dLoss/dz (z the pre-activation).  dy, y: (batch, Hy, Wo, C_out) float32."""
    _expect("dy", dy, y.shape)
    B, Hy, Wo, M = y.shape
    i0, i1 = (y_row0, y_row0 + Hy) if rows is None else rows
    if not y_row0 <= i0 <= i1 <= y_row0 + Hy:
        raise ValueError(f"rows {(i0, i1)} outside the output band [{y_row0}, {y_row0 + Hy})")
    if activation != "linear":
        _ACT_BACKWARD(_flat("dy", dy, 4), _flat("y", y, 4), B, Hy, Wo, M, i0 - y_row0, i1 - y_row0,
                      _ACT[activation])


def lc_backward_weights(x: np.ndarray, dz: np.ndarray, dw: np.ndarray, db: np.ndarray, k: int, stride: int,
                        rows: tuple[int, int] | None = None, x_row0: int = 0, y_row0: int = 0) -> None:
    """``dw``, ``db`` of the output rows ``rows``, overwritten (other rows left alone).

    dw[i, j] = sum_n patch(x[n], i, j) (x) dz[n, i, j], db[i, j] = sum_n dz[n, i, j], each sum
    over the batch in order.  x: (batch, Hx, W, C_in) from input row ``x_row0``;
    dz: (batch, Hy, Wo, C_out) = dLoss/dz; dw: (Hy, Wo, k, k, C_in, C_out); db: (Hy, Wo, C_out);
    the last three from output row ``y_row0``.
    """
    g = _geometry(x, dz, dw, k, stride, rows, x_row0, y_row0)
    _expect("db", db, dz.shape[1:])
    B, Hx, Wx, C, Hy, Wo, M = g[:7]
    i0, i1 = g[11], g[12]
    if i1 <= i0:
        return
    xf, dzf, dwf, dbf = _flat("x", x, 4), _flat("dz", dz, 4), _flat("dw", dw, 6), _flat("db", db, 3)
    if k * C >= 16:
        _weights_kernel(M, True)(xf, dzf, dwf, dbf, *g)
        return
    h0, h1 = i0 * stride - x_row0, (i1 - 1) * stride + k - x_row0
    Bp = -(-B // 16) * 16
    xt = _scratch("xt", (h1 - h0) * Wx * C * Bp)
    _TRANSPOSE_X(xf, xt, B, Bp, Hx, Wx * C, h0, h1)
    _weights_kernel(M, False)(xt, dzf, dwf, dbf, B, Bp, *g[1:], h0 + x_row0)


def lc_backward_input(w: np.ndarray, dz: np.ndarray, dx: np.ndarray, k: int, stride: int,
                      rows: tuple[int, int] | None = None, x_row0: int = 0, y_row0: int = 0,
                      accumulate: bool = False) -> None:
    """dx, the gradient with respect to the x band, from the output rows ``rows`` only.

    dx: (batch, Hx, W, C_in) float32, input rows ``[x_row0, x_row0 + Hx)``.  With
    ``accumulate=False`` the whole band is overwritten: rows that ``rows`` do not read
    become 0.  With ``accumulate=True`` the contribution is added to dx, which the caller
    initialised (e.g. the interior rows' call, or a neighbour's halo contribution).
    Each element is a sum in fixed order computed by one thread (threads split the input
    rows), so the result is deterministic and independent of the thread count.
    w, dz: as in :func:`lc_backward_weights`.
    """
    g = _geometry(dx, dz, w, k, stride, rows, x_row0, y_row0)
    B, Hx, Wx, C, Hy, Wo, M = g[:7]
    i0, i1 = g[11], g[12]
    h0, h1 = (i0 * stride - x_row0, (i1 - 1) * stride + k - x_row0) if i1 > i0 else (0, 0)
    if not accumulate:
        dx[:, :h0] = 0.0
        dx[:, h1:] = 0.0
    if h1 <= h0:
        return
    Bp = -(-B // 16) * 16
    zt = _scratch("zt", (i1 - i0) * Wo * M * Bp)
    _TRANSPOSE_DZ(_flat("dz", dz, 4), zt, B, Bp, Hy, Wo, M, i0 - y_row0, i1 - y_row0)
    kernel = _input_kernel(M, k * C)
    rbuf = _scratch("rows", (h1 - h0) * (Bp // 16) * (Wx * C + 12) * 16)  # 12: the largest tile
    kernel(_flat("w", w, 6), zt, rbuf, _flat("dx", dx, 4), B, Bp, *g[1:], h0, h1, bool(accumulate))


def lc_backward(x: np.ndarray, w: np.ndarray, y: np.ndarray, dy: np.ndarray, dw: np.ndarray, db: np.ndarray,
                dx: np.ndarray | None, k: int, stride: int, activation: str,
                rows: tuple[int, int] | None = None, x_row0: int = 0, y_row0: int = 0,
                accumulate_dx: bool = False) -> None:
    """Gradients of an LC layer for the output rows ``rows``, given ``dy = dLoss/dy``.

    ``dy`` (rows ``rows``) is overwritten with dLoss/dz; then :func:`lc_backward_weights`
    writes dw, db and, unless ``dx`` is None (the first layer), :func:`lc_backward_input`
    writes dx (overwritten, or added to with ``accumulate_dx=True``).  Shapes and bands as in
    :func:`lc_forward`; dy like y, dw like w, db like b, dx like x.
    """
    lc_activation_backward(dy, y, activation, rows, y_row0)
    lc_backward_weights(x, dy, dw, db, k, stride, rows, x_row0, y_row0)
    if dx is not None:
        lc_backward_input(w, dy, dx, k, stride, rows, x_row0, y_row0, accumulate_dx)
