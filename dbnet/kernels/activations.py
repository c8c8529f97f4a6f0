"""Element-wise activations, fused with the bias add (forward) and the
derivative (backward).  Numba kernels, in place, float32, row-parallel.

Forward:  ``z[i, j] = act(z[i, j] + b[j])`` where ``z`` holds ``x @ W`` on entry.
Backward: ``d[i, j] *= act'(.)``, with the derivative written in terms of the
activation's *output* ``y`` (sigmoid: y(1-y), tanh: 1-y^2, relu: y>0), so the
pre-activation never has to be kept.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_JIT = dict(nogil=True, cache=True, parallel=True, error_model="numpy")

ACTIVATIONS = ("sigmoid", "tanh", "relu", "linear")


@nb.njit(**_JIT)
def _bias_sigmoid(z, b):
    n, m = z.shape
    one = np.float32(1.0)
    for i in nb.prange(n):
        for j in range(m):
            z[i, j] = one / (one + np.exp(-(z[i, j] + b[j])))


@nb.njit(**_JIT)
def _bias_tanh(z, b):
    n, m = z.shape
    for i in nb.prange(n):
        for j in range(m):
            z[i, j] = np.tanh(z[i, j] + b[j])


@nb.njit(**_JIT)
def _bias_relu(z, b):
    n, m = z.shape
    zero = np.float32(0.0)
    for i in nb.prange(n):
        for j in range(m):
            v = z[i, j] + b[j]
            z[i, j] = v if v > zero else zero


@nb.njit(**_JIT)
def _bias_linear(z, b):
    n, m = z.shape
    for i in nb.prange(n):
        for j in range(m):
            z[i, j] += b[j]


@nb.njit(**_JIT)
def _dsigmoid(d, y):
    n, m = d.shape
    one = np.float32(1.0)
    for i in nb.prange(n):
        for j in range(m):
            v = y[i, j]
            d[i, j] *= v * (one - v)


@nb.njit(**_JIT)
def _dtanh(d, y):
    n, m = d.shape
    one = np.float32(1.0)
    for i in nb.prange(n):
        for j in range(m):
            v = y[i, j]
            d[i, j] *= one - v * v


@nb.njit(**_JIT)
def _drelu(d, y):
    n, m = d.shape
    zero = np.float32(0.0)
    for i in nb.prange(n):
        for j in range(m):
            if not y[i, j] > zero:
                d[i, j] = zero


@nb.njit(nogil=True, cache=True)
def _dlinear(d, y):  # identity: nothing to do
    pass


_FORWARD = {"sigmoid": _bias_sigmoid, "tanh": _bias_tanh, "relu": _bias_relu, "linear": _bias_linear}
_BACKWARD = {"sigmoid": _dsigmoid, "tanh": _dtanh, "relu": _drelu, "linear": _dlinear}


def bias_activation(z: np.ndarray, b: np.ndarray, activation: str) -> None:
    """In place: ``z = act(z + b)``.  z: (batch, n) float32 C-contiguous; b: (n,) float32."""
    _FORWARD[activation](z, b)


def activation_backward(d: np.ndarray, y: np.ndarray, activation: str) -> None:
    """In place: ``d *= act'(.)`` given the activation output ``y``.  d, y: (batch, n) float32."""
    _BACKWARD[activation](d, y)
