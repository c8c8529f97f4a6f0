"""Network specs and their parameters, which live in one flat float32 vector.

A :class:`NetSpec` is a chain of layers: optional image layers first
(:class:`Local`, DistBelief's locally connected layer with untied weights, and
:class:`Pool`), then fully connected :class:`Dense` layers ending in the
logits of a softmax.  Images are NHWC: one example is ``(H, W, C)`` float32,
row-major, so a band of rows is contiguous and the flattened image a dense
layer sees is in ``(h, w, c)`` order.

**The canonical layout** (:func:`param_layout`, pure) is layer by layer, each
layer's weights then biases, row-major:

* Dense: ``W (n_in, n_out)``, ``b (n_out,)``;
* Local: ``W (Ho, Wo, k, k, C_in, C_out)`` (position-major: ``W[i, j]`` is the
  ``(k*k*C_in, C_out)`` matrix of output position ``(i, j)``, its rows in the
  patch's ``(di, dj, c)`` order), ``b (Ho, Wo, C_out)`` (untied);
* Pool: no parameters.

Checkpoints always store this order.  A replica split into P partitions keeps
its parameters partition-major instead (:mod:`dbnet.mp.plan`), and converts
from and to this order when it reads or writes a checkpoint.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from dbnet.kernels import ACTIVATIONS

F32 = np.float32


@dataclass(frozen=True)
class Dense:
    """A fully connected layer ``y = act(x @ W + b)``; x (batch, n_in), y (batch, n_out)."""

    n_in: int
    n_out: int
    activation: str

    @property
    def n_params(self) -> int:
        return self.n_in * self.n_out + self.n_out

    @property
    def w_shape(self) -> tuple[int, ...]:
        return (self.n_in, self.n_out)

    @property
    def b_shape(self) -> tuple[int, ...]:
        return (self.n_out,)

    @property
    def out_size(self) -> int:
        return self.n_out

    def flops(self) -> int:
        """Multiply-adds x 2 per example of the forward pass."""
        return 2 * self.n_in * self.n_out


@dataclass(frozen=True)
class Local:
    """A locally connected layer: untied ``k x k`` filters over all input maps, stride ``stride``, no padding.

    ``y[b, i, j, m] = act(sum_{di, dj, c} x[b, i*s + di, j*s + dj, c] * W[i, j, di, dj, c, m] + b[i, j, m])``
    with x (batch, H, W, C_in) and y (batch, Ho, Wo, maps).
    """

    in_shape: tuple[int, int, int]  # (H, W, C_in)
    k: int
    maps: int
    stride: int
    activation: str

    @property
    def out_shape(self) -> tuple[int, int, int]:
        h, w, _ = self.in_shape
        return ((h - self.k) // self.stride + 1, (w - self.k) // self.stride + 1, self.maps)

    @property
    def w_shape(self) -> tuple[int, ...]:
        ho, wo, m = self.out_shape
        return (ho, wo, self.k, self.k, self.in_shape[2], m)

    @property
    def b_shape(self) -> tuple[int, ...]:
        return self.out_shape

    @property
    def n_params(self) -> int:
        return math.prod(self.w_shape) + math.prod(self.b_shape)

    @property
    def out_size(self) -> int:
        return math.prod(self.out_shape)

    def flops(self) -> int:
        return 2 * math.prod(self.w_shape)


@dataclass(frozen=True)
class Pool:
    """Max or average pooling, ``k x k`` windows, stride ``stride``, per map; no parameters."""

    in_shape: tuple[int, int, int]
    k: int
    stride: int
    mode: str  # "max" | "avg"
    activation: str = "linear"  # pooling has none; the field keeps every layer's interface alike

    @property
    def out_shape(self) -> tuple[int, int, int]:
        h, w, c = self.in_shape
        return ((h - self.k) // self.stride + 1, (w - self.k) // self.stride + 1, c)

    w_shape = b_shape = (0,)
    n_params = 0

    @property
    def out_size(self) -> int:
        return math.prod(self.out_shape)

    def flops(self) -> int:
        return self.k * self.k * self.out_size


SPATIAL = (Local, Pool)


def is_spatial(layer) -> bool:
    return isinstance(layer, SPATIAL)


@dataclass(frozen=True)
class NetSpec:
    """A feed-forward network ending in logits; the loss is softmax cross-entropy."""

    layers: tuple
    input_shape: tuple[int, ...] = ()  # (H, W, C) when the first layer is an image layer

    def __post_init__(self):
        if not self.layers:
            raise ValueError("a network needs at least one layer")
        if not isinstance(self.layers[-1], Dense):
            raise ValueError("the last layer gives logits for the softmax: it must be dense")
        seen_dense = False
        for i, layer in enumerate(self.layers):
            if is_spatial(layer):
                if seen_dense:
                    raise ValueError("image layers (local, pool) must come before the dense layers")
                want = self.input_shape if i == 0 else getattr(self.layers[i - 1], "out_shape", None)
                if tuple(layer.in_shape) != tuple(want):
                    raise ValueError(f"layer {i} expects input {layer.in_shape}, gets {want}")
                if min(layer.out_shape) < 1 or layer.k < 1 or layer.stride < 1:
                    raise ValueError(f"layer {i}: a {layer.k}x{layer.k} window (stride {layer.stride}) does not fit "
                                     f"its input {layer.in_shape}")
            else:
                seen_dense = True
                n_in = self.n_inputs if i == 0 else self.layers[i - 1].out_size
                if layer.n_in != n_in:
                    raise ValueError(f"layer sizes do not chain: {n_in} outputs feed {layer.n_in} inputs")
            if layer.activation not in ACTIVATIONS:
                raise ValueError(f"unknown activation {layer.activation!r}; valid: {', '.join(ACTIVATIONS)}")
            if isinstance(layer, Pool) and layer.mode not in ("max", "avg"):
                raise ValueError(f"unknown pooling {layer.mode!r}; valid: 'max', 'avg'")
        if self.layers[-1].activation != "linear":
            raise ValueError("the last layer gives logits for the softmax: its activation must be 'linear'")

    @classmethod
    def mlp(cls, n_inputs: int, hidden: tuple[int, ...] | list[int], n_classes: int, activation: str) -> NetSpec:
        """``n_inputs - hidden... (activation) - n_classes`` with linear logits."""
        sizes = [n_inputs, *hidden, n_classes]
        acts = [activation] * len(hidden) + ["linear"]
        return cls(tuple(Dense(i, o, a) for i, o, a in zip(sizes, sizes[1:], acts)))

    @classmethod
    def build(cls, input_shape: tuple[int, ...], features: list[str] | tuple[str, ...], hidden, n_classes: int,
              activation: str) -> NetSpec:
        """Image layers from ``features`` (see :func:`parse_feature`), then an MLP head.

        ``input_shape`` is the dataset's (H, W) or (H, W, C); without features it may be anything.
        """
        if not features:
            return cls.mlp(math.prod(input_shape), hidden, n_classes, activation)
        if len(input_shape) not in (2, 3):
            raise ValueError(f"image layers need (height, width[, channels]) inputs, the dataset has {list(input_shape)}")
        shape = tuple(input_shape) + ((1,) if len(input_shape) == 2 else ())
        layers: list = []
        cur = shape
        for text in features:
            layer = parse_feature(text, cur, activation)
            layers.append(layer)
            cur = layer.out_shape
        sizes = [math.prod(cur), *hidden, n_classes]
        acts = [activation] * len(hidden) + ["linear"]
        layers += [Dense(i, o, a) for i, o, a in zip(sizes, sizes[1:], acts)]
        return cls(tuple(layers), shape)

    @property
    def n_inputs(self) -> int:
        return math.prod(self.input_shape) if self.input_shape else self.layers[0].n_in

    @property
    def n_classes(self) -> int:
        return self.layers[-1].n_out

    @property
    def n_params(self) -> int:
        return sum(layer.n_params for layer in self.layers)

    def describe(self) -> str:
        """DistBelief-style summary, e.g. ``440 - 2560x4 sigmoid - 8192 softmax (41.78M params)``."""
        parts = ["x".join(map(str, self.input_shape)) if self.input_shape else str(self.n_inputs)]
        for layer in self.layers:
            if isinstance(layer, Local):
                parts.append(f"lc{layer.k}x{layer.k}/{layer.stride}:{layer.maps}")
            elif isinstance(layer, Pool):
                parts.append(f"{layer.mode}pool{layer.k}/{layer.stride}")
        hidden = [layer.n_out for layer in self.layers[:-1] if isinstance(layer, Dense)]
        if hidden:
            runs: list[str] = []
            i = 0
            while i < len(hidden):
                j = i
                while j < len(hidden) and hidden[j] == hidden[i]:
                    j += 1
                runs.append(f"{hidden[i]}x{j - i}" if j - i > 1 else str(hidden[i]))
                i = j
            parts.append(" ".join(runs))
        act = next((layer.activation for layer in self.layers if layer.activation != "linear"), None)
        if act and len(self.layers) > 1:
            parts[-1] += f" {act}"
        parts.append(f"{self.n_classes} softmax")
        return " - ".join(parts) + f" ({self.n_params / 1e6:.2f}M params)"


def parse_feature(text: str, in_shape: tuple[int, int, int], activation: str):
    """One image layer from its config string, given its input ``(H, W, C)``.

    ``"local K MAPS [stride S]"`` (``lc`` for short) or ``"maxpool K [stride S]"`` /
    ``"avgpool K [stride S]"`` (a pool's stride defaults to K).
    """
    words = text.split()
    try:
        kind, nums = words[0].lower(), words[1:]
        stride = None
        if len(nums) >= 2 and nums[-2] == "stride":
            stride = int(nums[-1])
            nums = nums[:-2]
        if kind in ("local", "lc") and len(nums) == 2:
            return Local(tuple(in_shape), int(nums[0]), int(nums[1]), stride or 1, activation)
        if kind in ("maxpool", "avgpool") and len(nums) == 1:
            k = int(nums[0])
            return Pool(tuple(in_shape), k, stride or k, kind[:3])
    except (ValueError, IndexError):
        pass
    raise ValueError(f"model.features: cannot read {text!r}; write 'local K MAPS [stride S]', "
                     f"'maxpool K [stride S]' or 'avgpool K [stride S]'")


@dataclass(frozen=True)
class LayerSlices:
    """Where one layer's parameters sit in the flat vector."""

    w: slice
    b: slice
    w_shape: tuple[int, ...]
    b_shape: tuple[int, ...] = ()


@functools.lru_cache(maxsize=64)
def param_layout(spec: NetSpec) -> tuple[LayerSlices, ...]:
    """Offsets of every layer's ``W`` and ``b`` in the canonical flat vector (pure; cached per spec)."""
    out, off = [], 0
    for layer in spec.layers:
        nw = math.prod(layer.w_shape) if layer.n_params else 0
        nb = math.prod(layer.b_shape) if layer.n_params else 0
        out.append(LayerSlices(slice(off, off + nw), slice(off + nw, off + nw + nb), layer.w_shape, layer.b_shape))
        off += nw + nb
    return tuple(out)


def param_views(spec: NetSpec, flat: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(W, b)`` views into ``flat`` (n_params,) float32 for every layer; no copies."""
    if flat.shape != (spec.n_params,) or flat.dtype != F32:
        raise ValueError(f"expected a flat float32 vector of {spec.n_params} parameters, got {flat.dtype} {flat.shape}")
    return [(flat[s.w].reshape(s.w_shape), flat[s.b].reshape(s.b_shape)) for s in param_layout(spec)]


def fan_in_out(layer) -> tuple[int, int]:
    if isinstance(layer, Local):
        return layer.k * layer.k * layer.in_shape[2], layer.maps
    return layer.n_in, layer.n_out


def init_params(spec: NetSpec, seed: int, out: np.ndarray | None = None) -> np.ndarray:
    """Deterministic initialization from ``seed``: a flat float32 vector in the canonical layout.

    Weights are uniform in ``[-r, r]`` with Glorot's ``r = sqrt(6 / (n_in + n_out))``
    (times 4 for sigmoid layers, as Glorot & Bengio recommend), He's
    ``r = sqrt(6 / n_in)`` for ReLU layers; biases are zero.  A locally connected
    layer's fan-in is its patch (k*k*C_in), its fan-out its maps.  The same seed
    gives the same vector on every machine (numpy's PCG64 stream, float32 draws).
    """
    flat = np.empty(spec.n_params, F32) if out is None else out
    rng = np.random.default_rng(seed)
    for layer, (w, b) in zip(spec.layers, param_views(spec, flat)):
        if not layer.n_params:
            continue
        n_in, n_out = fan_in_out(layer)
        if layer.activation == "relu":
            r = np.sqrt(6.0 / n_in)
        else:
            r = np.sqrt(6.0 / (n_in + n_out)) * (4.0 if layer.activation == "sigmoid" else 1.0)
        rng.random(out=w, dtype=F32)  # [0, 1)
        w *= F32(2 * r)
        w -= F32(r)
        b[...] = 0
    return flat


def __getattr__(name):  # ``from dbnet.model import Network`` keeps working; it lives in dbnet.network
    if name == "Network":
        from dbnet.network import Network

        return Network
    raise AttributeError(name)
