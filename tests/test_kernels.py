"""Every Numba/BLAS kernel against its plain-numpy twin in dbnet.kernels.reference.

The twins of the dense layer go through the same ``np.matmul`` (the same
OpenBLAS sgemm kernel) as the layer itself, so the dense layer is also checked
against a float64 reference that does not call BLAS at all (``matmul64``).
"""

import math

import numpy as np
import pytest

from dbnet.kernels import (
    ACTIVATIONS,
    activation_backward,
    bias_activation,
    column_sums,
    dense_backward,
    dense_forward,
    softmax_cross_entropy,
    updates,
)
from dbnet.kernels import reference as ref

RNG = np.random.default_rng(1234)


def randn(*shape, scale=1.0):
    return (scale * RNG.standard_normal(shape)).astype(np.float32)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 300)])
def test_bias_activation_matches_numpy(act, shape):
    z, b = randn(*shape, scale=3), randn(shape[1])
    expect = ref.activation(z + b, act)
    bias_activation(z, b, act)
    np.testing.assert_allclose(z, expect, rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_backward_matches_numpy(act):
    y = ref.activation(randn(9, 31, scale=2), act).astype(np.float32)
    d = randn(9, 31)
    expect = d * ref.activation_grad_from_output(y, act)
    activation_backward(d, y, act)
    np.testing.assert_allclose(d, expect, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (257, 130)])
def test_column_sums(shape):
    d = randn(*shape)
    out = np.full(shape[1], 99.0, np.float32)
    column_sums(d, out)
    np.testing.assert_allclose(out, d.astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("need_dx", [True, False])
def test_dense_forward_backward_match_numpy(act, need_dx):
    x, w, b = randn(11, 17), randn(17, 23, scale=0.3), randn(23)
    y = np.empty((11, 23), np.float32)
    dense_forward(x, w, b, y, act)
    np.testing.assert_allclose(y, ref.dense_forward(x, w, b, act), rtol=1e-5, atol=1e-6)

    dy = randn(11, 23)
    dz, dw_ref, db_ref, dx_ref = ref.dense_backward(x, w, y, dy.copy(), act, need_dx)
    dw, db = np.empty_like(w), np.empty_like(b)
    dx = np.empty_like(x) if need_dx else None
    dense_backward(x, w, y, dy, dw, db, dx, act)
    np.testing.assert_allclose(dy, dz, rtol=1e-6, atol=1e-6)  # dy now holds dLoss/dz
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, db_ref, rtol=1e-5, atol=1e-5)
    if need_dx:
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_place", [True, False])
def test_softmax_cross_entropy_matches_numpy(in_place):
    z, labels = randn(33, 12, scale=4), RNG.integers(0, 12, 33).astype(np.int32)
    loss_ref, hits_ref, dz_ref = ref.softmax_cross_entropy(z, labels)
    rl, rh = np.empty(40), np.empty(40, np.int32)
    zin = z.copy()
    dz = zin if in_place else np.empty_like(z)
    loss, hits = softmax_cross_entropy(zin, labels, dz, rl, rh)
    assert loss == pytest.approx(loss_ref, rel=1e-6)
    assert hits == hits_ref
    np.testing.assert_allclose(dz, dz_ref, rtol=1e-5, atol=1e-7)
    loss2, hits2 = softmax_cross_entropy(z, labels, None, rl, rh)
    assert loss2 == pytest.approx(loss_ref, rel=1e-6) and hits2 == hits_ref


def test_softmax_is_stable_for_huge_logits():
    z = np.array([[1e4, 0.0, -1e4]], np.float32)
    loss, hits = softmax_cross_entropy(z, np.array([0], np.int32), np.empty_like(z), np.empty(1), np.empty(1, np.int32))
    assert loss == pytest.approx(0.0, abs=1e-6) and hits == 1


@pytest.mark.parametrize("wd", [0.0, 1e-2])
def test_sgd(wd):
    w, g = randn(1001), randn(1001)
    expect = ref.sgd(w, g, 0.1, wd)
    updates.sgd(w, g, 0.1, wd)
    np.testing.assert_allclose(w, expect, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum(nesterov):
    w, g, v = randn(777), randn(777), randn(777)
    w_ref, v_ref = ref.momentum(w, g, v, 0.05, 0.9, nesterov, 1e-3)
    updates.momentum(w, g, v, 0.05, 0.9, nesterov, 1e-3)
    np.testing.assert_allclose(w, w_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(v, v_ref, rtol=1e-6, atol=1e-6)


def test_adagrad():
    w, g, acc = randn(513), randn(513), np.abs(randn(513))
    w_ref, acc_ref = ref.adagrad(w, g, acc, 0.3, 1e-8)
    updates.adagrad(w, g, acc, 0.3, 1e-8)
    np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acc, acc_ref, rtol=1e-6)


def test_update_on_slices_is_bitwise_equal_to_whole():
    """What lets parameter-server shards reproduce single-process SGD exactly."""
    n = 10_007
    w, g, acc = randn(n), randn(n), np.abs(randn(n))
    whole_w, whole_acc = w.copy(), acc.copy()
    updates.adagrad(whole_w, g, whole_acc, 0.1, 1e-8)
    for lo, hi in [(0, 3), (3, 5000), (5000, 9999), (9999, n)]:
        updates.adagrad(w[lo:hi], g[lo:hi], acc[lo:hi], 0.1, 1e-8)
    assert np.array_equal(w, whole_w) and np.array_equal(acc, whole_acc)


def test_count_nonfinite_and_axpy():
    x = randn(100)
    assert updates.count_nonfinite(x) == 0
    x[[3, 50, 99]] = [np.nan, np.inf, -np.inf]
    assert updates.count_nonfinite(x) == 3
    y, a = randn(100), randn(100)
    expect = y + np.float32(0.5) * a
    updates.axpy(y, 0.5, a)
    np.testing.assert_allclose(y, expect, rtol=1e-6)


# --- Dense layer against a float64 reference that bypasses OpenBLAS --------------------------------

U = 2.0**-24  # unit roundoff of float32


def matmul64(a, b):
    """``a @ b`` in float64 by numpy's own einsum loops: ``optimize=False`` never calls BLAS."""
    return np.einsum("ik,kj->ij", a.astype(np.float64), b.astype(np.float64), optimize=False)


def gemm_bound(a, b, n_extra=0):
    """Worst-case error of a float32 product ``a @ b`` with inner size K, elementwise.

    Any summation order (blocked, FMA or not, any threads) gives
    ``|fl(AB) - AB| <= gamma_K |A||B|`` with ``gamma_K = K u / (1 - K u)``
    (Higham, Accuracy and Stability, Thm 3.5); ``n_extra`` more float32
    operations on the result (adding the bias) add one rounding each.  The
    float64 reference is exact to ~K 2^-53, far below this.  A wrong kernel
    (a dropped, doubled or misplaced term, a stale block) is off by about one
    term, |A||B|/K, which exceeds the bound by a factor of 1 / (K^2 u) > 180
    for K <= 300.
    """
    k = a.shape[1] + n_extra
    gamma = k * U / (1 - k * U)
    return gamma * matmul64(np.abs(a), np.abs(b))


def blas_kernel() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown BLAS kernel"
    return ", ".join(f"{p['internal_api']} {p['version']} {p.get('architecture', '?')}"
                     for p in threadpool_info() if p["user_api"] == "blas")


def assert_within(got, ref, bound, what):
    err = np.abs(got.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), (
        f"{what}: {int((err > bound).sum())} of {err.size} elements beyond the float32 error bound; "
        f"worst at {worst}: got {got[worst]!r}, float64 reference {ref[worst]!r}, bound {bound[worst]:.3g} "
        f"[{blas_kernel()}]")


# (batch, n_in, n_out): trivial; odd sizes on OpenBLAS's small-matrix path (M*N*K < 1e6); and
# blocked sgemm with packing and edge tiles, K crossing the SkylakeX K-block of 256 once and twice.
DENSE_SHAPES = [(1, 1, 1), (33, 17, 65), (256, 300, 129), (64, 700, 96)]


def test_matmul64_is_exact_where_sampled():
    """The reference itself: float32 products are exact in float64; fsum rounds their sum once."""
    rng = np.random.default_rng(7)
    a, b = randn(40, 300), randn(300, 30)
    ref = matmul64(a, b)
    for i, j in zip(rng.integers(0, 40, 25), rng.integers(0, 30, 25)):
        exact = math.fsum(float(a[i, k]) * float(b[k, j]) for k in range(300))
        assert abs(ref[i, j] - exact) <= 300 * 2.0**-53 * float(np.abs(a[i]) @ np.abs(b[:, j]))


def test_gemm_bound_catches_a_dropped_term():
    """The tolerance is tight enough to see one missing product of median size in a sum of K = 300."""
    x, w = randn(256, 300), randn(300, 129)
    got = (x @ w).astype(np.float64)
    ref, bound = matmul64(x, w), gemm_bound(x, w)
    assert (np.abs(got - ref) <= bound).all()
    terms = x[100].astype(np.float64) * w[:, 50]
    k = np.argsort(np.abs(terms))[150]  # a term of median size
    got[100, 50] -= terms[k]
    assert abs(got[100, 50] - ref[100, 50]) > 10 * bound[100, 50]


@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dense_forward_against_float64_without_blas(shape):
    batch, n_in, n_out = shape
    x, w, b = randn(batch, n_in), randn(n_in, n_out, scale=n_in**-0.5), randn(n_out)
    y = np.empty((batch, n_out), np.float32)
    dense_forward(x, w, b, y, "linear")  # linear: y = x @ W + b, the sgemm and one rounding
    bound = gemm_bound(x, w, n_extra=1) + 2 * U * np.abs(b.astype(np.float64))
    assert_within(y, matmul64(x, w) + b, bound, f"dense_forward {shape}")


@pytest.mark.parametrize("act", ["linear", "sigmoid"])
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dense_backward_against_float64_without_blas(shape, act):
    batch, n_in, n_out = shape
    x, w = randn(batch, n_in), randn(n_in, n_out, scale=n_in**-0.5)
    y = np.empty((batch, n_out), np.float32)
    dense_forward(x, w, np.zeros(n_out, np.float32), y, act)
    dy = randn(batch, n_out)
    dw, db, dx = np.empty_like(w), np.empty(n_out, np.float32), np.empty_like(x)
    dense_backward(x, w, y, dy, dw, db, dx, act)
    dz = dy  # now dLoss/dz in float32: the sgemm inputs, so the references use exactly these
    assert_within(dw, matmul64(x.T, dz), gemm_bound(x.T, dz), f"dW = x.T @ dz {shape} {act}")
    assert_within(dx, matmul64(dz, w.T), gemm_bound(dz, w.T), f"dx = dz @ W.T {shape} {act}")
    ones = np.ones((1, batch), np.float32)
    assert_within(db[None, :], matmul64(ones, dz), gemm_bound(ones, dz), f"db {shape} {act}")
