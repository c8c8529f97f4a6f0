"""Networks whose parameters live in one flat float32 vector.

A :class:`NetSpec` describes the layers; :func:`param_layout` gives, as a pure
function of the spec, where each layer's weights and biases sit in the flat
vector.  Parameter-server shards own contiguous slices of that vector (see
:func:`dbnet.partition.shard_slices`) and model partitions (later) own sets of
its ranges, so the layout is part of the public contract: layer by layer,
``W`` (n_in, n_out) row-major, then ``b`` (n_out,).

:class:`Network` holds the preallocated activation workspace for one batch
size and runs forward/backward with the kernels in :mod:`dbnet.kernels`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from dbnet.kernels import ACTIVATIONS, dense_backward, dense_forward, softmax_cross_entropy

F32 = np.float32


@dataclass(frozen=True)
class Dense:
    """A fully connected layer ``y = act(x @ W + b)``."""

    n_in: int
    n_out: int
    activation: str

    @property
    def n_params(self) -> int:
        return self.n_in * self.n_out + self.n_out


@dataclass(frozen=True)
class NetSpec:
    """A feed-forward network ending in logits; the loss is softmax cross-entropy."""

    layers: tuple[Dense, ...]

    def __post_init__(self):
        if not self.layers:
            raise ValueError("a network needs at least one layer")
        for a, b in zip(self.layers, self.layers[1:]):
            if a.n_out != b.n_in:
                raise ValueError(f"layer sizes do not chain: {a.n_out} outputs feed {b.n_in} inputs")
        if self.layers[-1].activation != "linear":
            raise ValueError("the last layer gives logits for the softmax: its activation must be 'linear'")
        for layer in self.layers:
            if layer.activation not in ACTIVATIONS:
                raise ValueError(f"unknown activation {layer.activation!r}; valid: {', '.join(ACTIVATIONS)}")

    @classmethod
    def mlp(cls, n_inputs: int, hidden: tuple[int, ...] | list[int], n_classes: int, activation: str) -> NetSpec:
        """``n_inputs - hidden... (activation) - n_classes`` with linear logits."""
        sizes = [n_inputs, *hidden, n_classes]
        acts = [activation] * len(hidden) + ["linear"]
        return cls(tuple(Dense(i, o, a) for i, o, a in zip(sizes, sizes[1:], acts)))

    @property
    def n_inputs(self) -> int:
        return self.layers[0].n_in

    @property
    def n_classes(self) -> int:
        return self.layers[-1].n_out

    @property
    def n_params(self) -> int:
        return sum(layer.n_params for layer in self.layers)

    def describe(self) -> str:
        """DistBelief-style summary, e.g. ``440 - 2560x4 sigmoid - 8192 softmax (41.78M params)``."""
        hidden = [layer.n_out for layer in self.layers[:-1]]
        parts = [str(self.n_inputs)]
        if hidden:
            runs: list[str] = []
            i = 0
            while i < len(hidden):
                j = i
                while j < len(hidden) and hidden[j] == hidden[i]:
                    j += 1
                runs.append(f"{hidden[i]}x{j - i}" if j - i > 1 else str(hidden[i]))
                i = j
            parts.append(" ".join(runs) + f" {self.layers[0].activation}")
        parts.append(f"{self.n_classes} softmax")
        return " - ".join(parts) + f" ({self.n_params / 1e6:.2f}M params)"


@dataclass(frozen=True)
class LayerSlices:
    """Where one layer's parameters sit in the flat vector."""

    w: slice
    b: slice
    w_shape: tuple[int, int]


@functools.lru_cache(maxsize=64)
def param_layout(spec: NetSpec) -> tuple[LayerSlices, ...]:
    """Offsets of every layer's ``W`` and ``b`` in the flat vector (pure; cached per spec)."""
    out, off = [], 0
    for layer in spec.layers:
        nw = layer.n_in * layer.n_out
        out.append(LayerSlices(slice(off, off + nw), slice(off + nw, off + nw + layer.n_out), (layer.n_in, layer.n_out)))
        off += nw + layer.n_out
    return tuple(out)


def param_views(spec: NetSpec, flat: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(W, b)`` views into ``flat`` (n_params,) float32 for every layer; no copies."""
    if flat.shape != (spec.n_params,) or flat.dtype != F32:
        raise ValueError(f"expected a flat float32 vector of {spec.n_params} parameters, got {flat.dtype} {flat.shape}")
    return [(flat[s.w].reshape(s.w_shape), flat[s.b]) for s in param_layout(spec)]


def init_params(spec: NetSpec, seed: int, out: np.ndarray | None = None) -> np.ndarray:
    """Deterministic initialization from ``seed``: a flat float32 vector.

    Weights are uniform in ``[-r, r]`` with Glorot's ``r = sqrt(6 / (n_in + n_out))``
    (times 4 for sigmoid layers, as Glorot & Bengio recommend), He's
    ``r = sqrt(6 / n_in)`` for ReLU layers; biases are zero.  The same seed gives
    the same vector on every machine (numpy's PCG64 stream, float32 draws).
    """
    flat = np.empty(spec.n_params, F32) if out is None else out
    rng = np.random.default_rng(seed)
    for layer, (w, b) in zip(spec.layers, param_views(spec, flat)):
        if layer.activation == "relu":
            r = np.sqrt(6.0 / layer.n_in)
        else:
            r = np.sqrt(6.0 / (layer.n_in + layer.n_out)) * (4.0 if layer.activation == "sigmoid" else 1.0)
        rng.random(out=w, dtype=F32)  # [0, 1)
        w *= F32(2 * r)
        w -= F32(r)
        b[...] = 0
    return flat


class Network:
    """Forward and backward passes of ``spec`` for batches of up to ``max_batch`` rows.

    Owns its workspace (about ``max_batch * sum(n_out) * 8`` bytes), allocated
    once; parameters and gradients are flat vectors passed in by the caller,
    so one Network serves any number of parameter vectors (replicas, shards'
    checks, finite differences).  Not thread-safe.
    """

    def __init__(self, spec: NetSpec, max_batch: int):
        self.spec = spec
        self.max_batch = max_batch
        self._acts = [np.empty((max_batch, layer.n_out), F32) for layer in spec.layers]
        # dLoss/d(output) of each hidden layer; the last layer's gradient reuses its logits buffer.
        self._dacts = [np.empty((max_batch, layer.n_out), F32) for layer in spec.layers[:-1]]
        self._row_loss = np.empty(max_batch, np.float64)
        self._row_hit = np.empty(max_batch, np.int32)

    def _check(self, params: np.ndarray, x: np.ndarray) -> int:
        n = x.shape[0]
        if n > self.max_batch:
            raise ValueError(f"batch of {n} rows exceeds this Network's max_batch={self.max_batch}")
        if x.shape[1:] != (self.spec.n_inputs,) or x.dtype != F32:
            raise ValueError(f"x must be ({n}, {self.spec.n_inputs}) float32, got {x.dtype} {x.shape}")
        return n

    def forward(self, params: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Logits for ``x`` (batch, n_inputs) float32: a view (batch, n_classes) into the workspace."""
        n = self._check(params, x)
        h = x
        for layer, (w, b), a in zip(self.spec.layers, param_views(self.spec, params), self._acts):
            dense_forward(h, w, b, a[:n], layer.activation)
            h = a[:n]
        return h

    def loss_and_grad(self, params: np.ndarray, x: np.ndarray, y: np.ndarray, grad: np.ndarray) -> tuple[float, int]:
        """Gradient of the mean cross-entropy over the batch, written into ``grad``.

        params, grad: (n_params,) float32.  x: (batch, n_inputs) float32.  y: (batch,) int32.
        Returns ``(loss summed over the batch, number of correct predictions)``
        for the parameters *before* this step.
        """
        n = x.shape[0]
        logits = self.forward(params, x)
        loss, hits = softmax_cross_entropy(logits, y, logits, self._row_loss, self._row_hit)
        pviews = param_views(self.spec, params)
        gviews = param_views(self.spec, grad)
        dy = logits  # now holds dLoss/dlogits
        for i in range(len(self.spec.layers) - 1, -1, -1):
            layer = self.spec.layers[i]
            w, _ = pviews[i]
            dw, db = gviews[i]
            inp = x if i == 0 else self._acts[i - 1][:n]
            dx = None if i == 0 else self._dacts[i - 1][:n]
            dense_backward(inp, w, self._acts[i][:n], dy, dw, db, dx, layer.activation)
            dy = dx
        return loss, hits

    def evaluate(self, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """``(summed loss, number correct)`` on one batch, without gradients."""
        logits = self.forward(params, x)
        return softmax_cross_entropy(logits, y, None, self._row_loss, self._row_hit)
