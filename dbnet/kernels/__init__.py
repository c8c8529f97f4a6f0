"""Numba and BLAS kernels: the numerical core.  Nothing here knows about MPI.

Every kernel writes into caller-owned float32 buffers and allocates nothing;
:mod:`dbnet.kernels.reference` holds a plain-numpy twin of each, used by the
tests.
"""

from dbnet.kernels.activations import ACTIVATIONS, activation_backward, bias_activation
from dbnet.kernels.dense import column_sums, dense_backward, dense_forward
from dbnet.kernels.local import (
    lc_activation_backward,
    lc_backward,
    lc_backward_input,
    lc_backward_weights,
    lc_forward,
    output_size,
)
from dbnet.kernels.loss import softmax_cross_entropy
from dbnet.kernels.pool import pool_backward, pool_forward
from dbnet.kernels import updates

__all__ = [
    "ACTIVATIONS",
    "activation_backward",
    "bias_activation",
    "column_sums",
    "dense_backward",
    "dense_forward",
    "lc_activation_backward",
    "lc_backward",
    "lc_backward_input",
    "lc_backward_weights",
    "lc_forward",
    "output_size",
    "pool_backward",
    "pool_forward",
    "softmax_cross_entropy",
    "updates",
]
