"""Networks: the flat-vector layout, deterministic init, and whole-network gradient checks."""

import numpy as np
import pytest

from dbnet.model import Dense, NetSpec, Network, init_params, param_layout, param_views


def test_speech_model_is_41_78m_params():
    spec = NetSpec.mlp(440, [2560] * 4, 8192, "sigmoid")
    assert spec.n_params == 41_777_152
    assert spec.describe() == "440 - 2560x4 sigmoid - 8192 softmax (41.78M params)"


def test_layout_tiles_the_flat_vector():
    spec = NetSpec.mlp(5, [4, 3], 2, "tanh")
    covered = []
    for s in param_layout(spec):
        covered += list(range(s.w.start, s.w.stop)) + list(range(s.b.start, s.b.stop))
    assert covered == list(range(spec.n_params))
    flat = np.arange(spec.n_params, dtype=np.float32)
    (w0, b0), *_ = param_views(spec, flat)
    assert w0.shape == (5, 4) and np.shares_memory(w0, flat) and b0[0] == 20


def test_bad_specs_are_rejected():
    with pytest.raises(ValueError, match="do not chain"):
        NetSpec((Dense(3, 4, "relu"), Dense(5, 2, "linear")))
    with pytest.raises(ValueError, match="linear"):
        NetSpec((Dense(3, 2, "relu"),))
    with pytest.raises(ValueError, match="unknown activation"):
        NetSpec((Dense(3, 4, "swish"), Dense(4, 2, "linear")))


def test_init_is_deterministic_and_seeded():
    spec = NetSpec.mlp(20, [10], 3, "sigmoid")
    a, b, c = init_params(spec, 7), init_params(spec, 7), init_params(spec, 8)
    assert a.dtype == np.float32 and np.array_equal(a, b) and not np.array_equal(a, c)
    (w, bias), _ = param_views(spec, a)
    r = 4 * np.sqrt(6 / 30)
    assert np.all(np.abs(w) <= r) and w.std() > r / 4 and np.all(bias == 0)


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
def test_whole_network_gradient_matches_finite_differences(act):
    spec = NetSpec.mlp(6, [5, 4], 3, act)
    net = Network(spec, max_batch=8)
    rng = np.random.default_rng(0)
    params = init_params(spec, 3)
    params += rng.normal(0, 0.05, params.size).astype(np.float32)  # nonzero biases, no dead ReLUs at 0
    x = rng.standard_normal((7, 6)).astype(np.float32)
    y = rng.integers(0, 3, 7).astype(np.int32)
    grad = np.empty_like(params)
    net.loss_and_grad(params, x, y, grad)

    def loss(p):
        return net.evaluate(p.astype(np.float32), x, y)[0] / len(y)

    p64 = params.astype(np.float64)
    h = 1e-3
    num = np.empty(params.size)
    for i in range(params.size):
        up, down = p64.copy(), p64.copy()
        up[i] += h
        down[i] -= h
        num[i] = (loss(up) - loss(down)) / (2 * h)
    np.testing.assert_allclose(grad, num, rtol=3e-2, atol=2e-3)
    assert np.abs(grad).max() > 1e-3


def test_partial_batches_and_validation():
    spec = NetSpec.mlp(4, [3], 2, "relu")
    net = Network(spec, max_batch=5)
    p = init_params(spec, 0)
    g = np.empty_like(p)
    x, y = np.ones((3, 4), np.float32), np.zeros(3, np.int32)
    loss3, _ = net.loss_and_grad(p, x, y, g)
    assert np.isfinite(loss3)
    with pytest.raises(ValueError, match="max_batch"):
        net.forward(p, np.ones((6, 4), np.float32))
    with pytest.raises(ValueError, match="float32"):
        net.forward(p, np.ones((2, 4)))
    with pytest.raises(ValueError, match="flat float32"):
        net.forward(p[:-1], x)
