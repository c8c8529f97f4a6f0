"""Every Numba/BLAS kernel against its plain-numpy twin in dbnet.kernels.reference."""

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
