"""Locally connected and pooling kernels against their numpy twins in dbnet.kernels.reference.

The twins (im2col + einsum, col2im by slicing) are checked by central finite
differences in float64; the kernels are checked against the twins, and band /
row-range calls against the matching rows of a full call, bit for bit.
"""

import numba
import numpy as np
import pytest

from dbnet.kernels import (
    lc_backward,
    lc_backward_input,
    lc_backward_weights,
    lc_forward,
    output_size,
    pool_backward,
    pool_forward,
)
from dbnet.kernels import reference as ref

RNG = np.random.default_rng(4321)

# (batch, H, W, C_in, k, stride, C_out, activation)
LC_SHAPES = [
    (5, 9, 8, 3, 3, 1, 8, "relu"),
    (9, 11, 10, 2, 3, 2, 16, "tanh"),  # stride 2, odd sizes, a batch tile and a remainder
    (3, 7, 7, 1, 1, 1, 5, "sigmoid"),  # k = 1, C_in = 1, C_out not a multiple of 8
    (1, 6, 9, 4, 2, 2, 3, "linear"),  # batch 1
    (1, 5, 5, 2, 5, 1, 8, "sigmoid"),  # a single output position
    (17, 28, 28, 1, 5, 1, 16, "relu"),  # Fashion-MNIST's first LC layer
    (8, 12, 12, 16, 5, 1, 32, "tanh"),  # ... and its second one
    (4, 13, 12, 3, 4, 3, 12, "linear"),  # stride 3: input rows no output reads
]


def randn(*shape, scale=1.0):
    return (scale * RNG.standard_normal(shape)).astype(np.float32)


def lc_case(B, H, W, C, k, s, M):
    Ho, Wo = output_size(H, k, s), output_size(W, k, s)
    x, w, b = randn(B, H, W, C), randn(Ho, Wo, k, k, C, M, scale=(k * k * C) ** -0.5), randn(Ho, Wo, M)
    return x, w, b, np.empty((B, Ho, Wo, M), np.float32)


def f64(*arrays):
    return [a.astype(np.float64) for a in arrays]


@pytest.mark.parametrize("shape", LC_SHAPES, ids=str)
def test_lc_matches_numpy(shape):
    *dims, act = shape
    k, s = dims[4], dims[5]
    x, w, b, y = lc_case(*dims)
    lc_forward(x, w, b, y, k, s, act)
    np.testing.assert_allclose(y, ref.lc_forward(*f64(x, w, b), k, s, act), rtol=1e-5, atol=2e-6)

    dy = randn(*y.shape)
    dz, dw_ref, db_ref, dx_ref = ref.lc_backward(*f64(x, w, y, dy), k, s, act)
    dw, db, dx = np.full_like(w, np.nan), np.full_like(b, np.nan), np.full_like(x, np.nan)
    lc_backward(x, w, y, dy, dw, db, dx, k, s, act)
    np.testing.assert_allclose(dy, dz, rtol=1e-6, atol=1e-7)  # dy now holds dLoss/dz
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, db_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)


def test_lc_first_layer_skips_dx():
    x, w, b, y = lc_case(3, 6, 6, 2, 3, 1, 8)
    lc_forward(x, w, b, y, 3, 1, "tanh")
    dw, db = np.empty_like(w), np.empty_like(b)
    lc_backward(x, w, y, randn(*y.shape), dw, db, None, 3, 1, "tanh")
    assert np.isfinite(dw).all() and np.isfinite(db).all()


@pytest.mark.parametrize("k, s, M", [(3, 1, 8), (4, 2, 5), (6, 1, 8), (6, 2, 5)])  # k * C_in < 16 and >= 16
def test_lc_band_equals_rows_of_full_call(k, s, M):
    """A partition holding x rows [x_row0, ...) and output rows [y_row0, ...) reproduces the full call."""
    B, H, W, C = 9, 23, 11, 3
    x, w, b, y = lc_case(B, H, W, C, k, s, M)
    Ho = y.shape[1]
    dy = randn(*y.shape)
    lc_forward(x, w, b, y, k, s, "sigmoid")
    dz = dy * ref.activation_grad_from_output(y, "sigmoid")
    dw, db, dx = np.empty_like(w), np.empty_like(b), np.empty_like(x)
    lc_backward_weights(x, dz, dw, db, k, s)
    lc_backward_input(w, dz, dx, k, s)

    y0, y1 = 2, 7  # this partition's output rows
    i0, i1 = 3, 6  # the rows it computes now (the interior, say)
    x0, x1 = i0 * s - 1, (i1 - 1) * s + k + 1  # its input band, a row wider than needed on each side
    xb = x[:, x0:x1].copy()
    wb, bb, dzb = w[y0:y1].copy(), b[y0:y1].copy(), dz[:, y0:y1].copy()
    yb = np.full((B, y1 - y0, *y.shape[2:]), np.nan, np.float32)
    lc_forward(xb, wb, bb, yb, k, s, "sigmoid", rows=(i0, i1), x_row0=x0, y_row0=y0)
    np.testing.assert_array_equal(yb[:, i0 - y0:i1 - y0], y[:, i0:i1])
    assert np.isnan(yb[:, :i0 - y0]).all() and np.isnan(yb[:, i1 - y0:]).all()  # other rows untouched

    dwb, dbb = np.full_like(wb, np.nan), np.full_like(bb, np.nan)
    lc_backward_weights(xb, dzb, dwb, dbb, k, s, rows=(i0, i1), x_row0=x0, y_row0=y0)
    np.testing.assert_array_equal(dwb[i0 - y0:i1 - y0], dw[i0:i1])
    np.testing.assert_array_equal(dbb[i0 - y0:i1 - y0], db[i0:i1])

    # dx from output rows [i0, i1) only: the same as a full-size call restricted to those rows,
    # and, on input rows that no other output row reads, the full dx itself.
    dxb = np.full_like(xb, np.nan)
    lc_backward_input(wb, dzb, dxb, k, s, rows=(i0, i1), x_row0=x0, y_row0=y0)
    dx_rows = np.empty_like(x)
    lc_backward_input(w, dz, dx_rows, k, s, rows=(i0, i1))
    np.testing.assert_array_equal(dxb, dx_rows[:, x0:x1])
    for h in range(x0, x1):
        readers = [i for i in range(Ho) if 0 <= h - i * s < k]
        if readers and i0 <= min(readers) and max(readers) < i1:
            np.testing.assert_array_equal(dxb[:, h - x0], dx[:, h])
        if not readers or max(readers) < i0 or min(readers) >= i1:
            assert (dxb[:, h - x0] == 0).all()

    # interior, then the edges accumulated: the full dx, up to rounding
    dxs = np.empty_like(x)
    lc_backward_input(w, dz, dxs, k, s, rows=(i0, i1))
    lc_backward_input(w, dz, dxs, k, s, rows=(0, i0), accumulate=True)
    lc_backward_input(w, dz, dxs, k, s, rows=(i1, Ho), accumulate=True)
    np.testing.assert_allclose(dxs, dx, rtol=1e-5, atol=1e-6)


def test_lc_deterministic_and_thread_independent():
    x, w, b, y = lc_case(11, 14, 13, 3, 4, 1, 8)
    lc_forward(x, w, b, y, 4, 1, "tanh")
    dz = randn(*y.shape)
    runs = []
    for threads in (numba.get_num_threads(), 1, numba.get_num_threads()):
        numba.set_num_threads(threads)
        try:
            dw, db, dx, y2 = np.empty_like(w), np.empty_like(b), np.empty_like(x), np.empty_like(y)
            lc_forward(x, w, b, y2, 4, 1, "tanh")
            lc_backward_weights(x, dz, dw, db, 4, 1)
            lc_backward_input(w, dz, dx, 4, 1)
            runs.append((y2, dw, db, dx))
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for other in runs[1:]:
        for a, c in zip(runs[0], other):
            np.testing.assert_array_equal(a, c)


def test_lc_twin_finite_differences():
    """The twin's backward against central differences of its forward, in float64."""
    B, H, W, C, k, s, M = 2, 6, 5, 2, 3, 2, 3
    Ho, Wo = output_size(H, k, s), output_size(W, k, s)
    x, w, b = f64(randn(B, H, W, C), randn(Ho, Wo, k, k, C, M), randn(Ho, Wo, M))
    r = RNG.standard_normal((B, Ho, Wo, M))

    def loss(x, w, b):
        return float((ref.lc_forward(x, w, b, k, s, "tanh") * r).sum())

    y = ref.lc_forward(x, w, b, k, s, "tanh")
    _, dw, db, dx = ref.lc_backward(x, w, y, r, k, s, "tanh")
    eps = 1e-6
    for name, a, g in (("x", x, dx), ("w", w, dw), ("b", b, db)):
        for idx in map(tuple, RNG.integers(0, a.shape, (12, a.ndim))):
            saved = a[idx]
            a[idx] = saved + eps
            up = loss(x, w, b)
            a[idx] = saved - eps
            down = loss(x, w, b)
            a[idx] = saved
            assert abs((up - down) / (2 * eps) - g[idx]) < 1e-6, (name, idx)


def test_lc_float32_finite_differences():
    """The kernels' gradients against central differences of the float32 kernel itself."""
    B, H, W, C, k, s, M = 3, 7, 6, 2, 3, 2, 8
    x, w, b, y = lc_case(B, H, W, C, k, s, M)
    r = randn(*y.shape)

    def loss():
        lc_forward(x, w, b, y, k, s, "sigmoid")
        return float((y.astype(np.float64) * r).sum())

    loss()
    dy = r.copy()
    dw, db, dx = np.empty_like(w), np.empty_like(b), np.empty_like(x)
    lc_backward(x, w, y, dy, dw, db, dx, k, s, "sigmoid")
    eps = 1e-2
    for name, a, g in (("x", x, dx), ("w", w, dw), ("b", b, db)):
        for idx in map(tuple, RNG.integers(0, a.shape, (8, a.ndim))):
            saved = a[idx]
            a[idx] = saved + eps
            up = loss()
            a[idx] = saved - eps
            down = loss()
            a[idx] = saved
            assert abs((up - down) / (2 * eps) - g[idx]) < 2e-3 + 2e-3 * abs(g[idx]), (name, idx)


def test_lc_checks_arguments():
    x, w, b, y = lc_case(2, 6, 6, 1, 3, 1, 8)
    with pytest.raises(TypeError, match="float32"):
        lc_forward(x.astype(np.float64), w, b, y, 3, 1, "relu")
    with pytest.raises(ValueError, match="w: expected shape"):
        lc_forward(x, w[:, :, :2], b, y, 3, 1, "relu")
    with pytest.raises(ValueError, match="x band holds"):
        lc_forward(x[:, 1:].copy(), w, b, y, 3, 1, "relu", x_row0=1)


# (batch, H, W, C, k, stride)
POOL_SHAPES = [(3, 8, 8, 4, 2, 2), (2, 9, 7, 3, 3, 2), (5, 6, 6, 1, 3, 1), (1, 7, 5, 2, 1, 1), (2, 9, 9, 2, 2, 3)]


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=str)
def test_pool_matches_numpy(shape, mode):
    B, H, W, C, k, s = shape
    # small integers: many ties, which must go to the first maximum in (di, dj) order
    x = RNG.integers(-2, 3, (B, H, W, C)).astype(np.float32)
    Ho, Wo = output_size(H, k, s), output_size(W, k, s)
    y, am = np.empty((B, Ho, Wo, C), np.float32), np.empty((B, Ho, Wo, C), np.int32)
    pool_forward(x, y, am, k, s, mode)
    y_ref, am_ref = ref.pool_forward(x, k, s, mode)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    if mode == "max":
        np.testing.assert_array_equal(am, am_ref)
    dy = randn(*y.shape)
    dx = np.full_like(x, np.nan)
    pool_backward(dy, am, dx, k, s, mode)
    np.testing.assert_allclose(dx, ref.pool_backward(dy, am_ref, x.shape, k, s, mode), rtol=1e-6, atol=1e-6)
    dx2 = np.empty_like(x)
    pool_backward(dy, am, dx2, k, s, mode)
    np.testing.assert_array_equal(dx, dx2)  # deterministic


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pool_band_equals_rows_of_full_call(mode):
    B, H, W, C, k, s = 3, 15, 8, 2, 3, 2
    x = randn(B, H, W, C)
    Ho, Wo = output_size(H, k, s), output_size(W, k, s)
    y, am = np.empty((B, Ho, Wo, C), np.float32), np.empty((B, Ho, Wo, C), np.int32)
    pool_forward(x, y, am, k, s, mode)
    dy = randn(*y.shape)
    dx_rows = np.empty_like(x)
    i0, i1, y0, x0 = 2, 5, 1, 3
    pool_backward(dy, am, dx_rows, k, s, mode, rows=(i0, i1))
    yb, amb = np.zeros((B, 5, Wo, C), np.float32), np.zeros((B, 5, Wo, C), np.int32)
    xb = x[:, x0:(i1 - 1) * s + k].copy()
    pool_forward(xb, yb, amb, k, s, mode, rows=(i0, i1), x_row0=x0, y_row0=y0)
    np.testing.assert_array_equal(yb[:, i0 - y0:i1 - y0], y[:, i0:i1])
    dxb = np.full_like(xb, np.nan)
    pool_backward(dy[:, y0:y0 + 5].copy(), am[:, y0:y0 + 5].copy(), dxb, k, s, mode, rows=(i0, i1),
                  x_row0=x0, y_row0=y0)
    np.testing.assert_array_equal(dxb, dx_rows[:, x0:x0 + xb.shape[1]])


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pool_twin_finite_differences(mode):
    B, H, W, C, k, s = 2, 7, 6, 2, 3, 2
    x = RNG.standard_normal((B, H, W, C))  # float64, no ties: max is differentiable
    y, am = ref.pool_forward(x, k, s, mode)
    r = RNG.standard_normal(y.shape)
    dx = ref.pool_backward(r, am, x.shape, k, s, mode)
    eps = 1e-6
    for idx in map(tuple, RNG.integers(0, x.shape, (20, 4))):
        saved = x[idx]
        x[idx] = saved + eps
        up = float((ref.pool_forward(x, k, s, mode)[0] * r).sum())
        x[idx] = saved - eps
        down = float((ref.pool_forward(x, k, s, mode)[0] * r).sum())
        x[idx] = saved
        assert abs((up - down) / (2 * eps) - dx[idx]) < 1e-6, idx
