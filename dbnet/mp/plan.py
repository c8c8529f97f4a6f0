"""How a network is cut into P model partitions (pure: any rank can compute any partition's plan).

DistBelief splits each layer's units across the machines of one model
replica (Dean et al. 2012, section 3 and Figure 1): a machine holds and
computes only its units and receives from other machines only the
activations its units are connected to.

* **Image layers** (:class:`~dbnet.model.Local`, :class:`~dbnet.model.Pool`)
  are cut into **bands of output rows**, balanced (heights not divisible by P
  work; a partition may own no rows).  A band's patches read input rows
  ``[lo*s, (hi-1)*s + k)``; the rows of that range owned by another
  partition are its **halo**, received once from their owner per step
  (backward: their gradients go back to the owner, who adds them).
* **Dense layers** are cut by **output units**.  Every unit is connected to
  every input, so each partition needs all of the previous layer's
  activations: the exchange is all-to-all (which is why dense layers stop
  scaling early); backward, the input gradients are summed by their owners.

One rule covers both: per example, a layer's output is a vector and each
partition **owns** a contiguous column range of it (for an image band, its
rows x width x maps, contiguous in NHWC); each layer **needs** a contiguous
column range of its input.  :func:`exchanges` lists who sends which columns
to whom.  The first layer reads the input batch, which every partition has.

Parameters are **partition-major**: partition 0's parameters of every layer,
then partition 1's, ..., each layer's local ``W`` then ``b`` (a band of an
image layer's position-major weights; a column block ``W[:, lo:hi]`` of a
dense layer's), so one partition's parameters are one contiguous range
(:func:`part_ranges`) that it alone fetches and pushes.  P = 1 is the
canonical layout of :mod:`dbnet.model`; :func:`to_canonical` and
:func:`from_canonical` convert (checkpoints are always canonical).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from dbnet.model import Dense, Local, NetSpec, is_spatial, param_views
from dbnet.partition import balanced_range


@dataclass(frozen=True)
class LayerPart:
    """What partition ``part`` of ``parts`` holds of one layer.

    ``lo, hi``: output rows (image layers) or units (dense) it owns.
    ``in_lo, in_hi``: input rows it reads (image layers; the whole input for dense: 0, n_in).
    ``own``: per-example output columns ``[own[0], own[1])``; ``need``: per-example input columns.
    ``w_shape``, ``b_shape``: shapes of its local parameters (W[lo:hi] / W[:, lo:hi] of the layer's).
    """

    lo: int
    hi: int
    in_lo: int
    in_hi: int
    own: tuple[int, int]
    need: tuple[int, int]
    w_shape: tuple[int, ...]
    b_shape: tuple[int, ...]

    @property
    def n_w(self) -> int:
        return math.prod(self.w_shape) if self.w_shape != (0,) else 0

    @property
    def n_b(self) -> int:
        return math.prod(self.b_shape) if self.b_shape != (0,) else 0

    @property
    def n_params(self) -> int:
        return self.n_w + self.n_b

    @property
    def rows(self) -> int:
        return self.hi - self.lo


def _in_row_size(spec: NetSpec, i: int) -> int:
    h, w, c = spec.layers[i].in_shape
    return w * c


def _layer_part(spec: NetSpec, i: int, parts: int, part: int) -> LayerPart:
    layer = spec.layers[i]
    if is_spatial(layer):
        ho, wo, m = layer.out_shape
        lo, hi = balanced_range(ho, parts, part)
        if hi > lo:
            in_lo, in_hi = lo * layer.stride, (hi - 1) * layer.stride + layer.k
        else:
            in_lo = in_hi = min(lo * layer.stride, layer.in_shape[0])
        row = wo * m
        ir = _in_row_size(spec, i)
        if isinstance(layer, Local):
            w_shape, b_shape = (hi - lo, *layer.w_shape[1:]), (hi - lo, *layer.b_shape[1:])
        else:
            w_shape = b_shape = (0,)
        return LayerPart(lo, hi, in_lo, in_hi, (lo * row, hi * row), (in_lo * ir, in_hi * ir), w_shape, b_shape)
    lo, hi = balanced_range(layer.n_out, parts, part)
    return LayerPart(lo, hi, 0, layer.n_in, (lo, hi), (0, layer.n_in), (layer.n_in, hi - lo), (hi - lo,))


@functools.lru_cache(maxsize=64)
def plan(spec: NetSpec, parts: int) -> tuple[tuple[LayerPart, ...], ...]:
    """``plan(spec, P)[p][i]``: partition p's part of layer i."""
    if parts < 1:
        raise ValueError(f"partitions must be >= 1, got {parts}")
    return tuple(tuple(_layer_part(spec, i, parts, p) for i in range(len(spec.layers))) for p in range(parts))


@dataclass(frozen=True)
class Exchange:
    """The columns of layer ``i - 1``'s output that move between partitions before layer ``i`` (forward).

    ``recv``: ``(q, lo, hi)``: columns ``[lo, hi)`` this partition receives from q (and, backward, sends
    their gradient back to q); ``send``: ``(q, lo, hi)``: columns it owns that q needs.  Sorted by q.
    """

    recv: tuple[tuple[int, int, int], ...]
    send: tuple[tuple[int, int, int], ...]

    @property
    def empty(self) -> bool:
        return not self.recv and not self.send


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int] | None:
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if hi > lo else None


@functools.lru_cache(maxsize=256)
def exchanges(spec: NetSpec, parts: int, part: int) -> tuple[Exchange, ...]:
    """One :class:`Exchange` per layer for partition ``part`` (layer 0's is empty: every partition has the input)."""
    P = plan(spec, parts)
    out = [Exchange((), ())]
    for i in range(1, len(spec.layers)):
        recv, send = [], []
        for q in range(parts):
            if q == part:
                continue
            r = _overlap(P[part][i].need, P[q][i - 1].own)
            if r:
                recv.append((q, *r))
            s = _overlap(P[q][i].need, P[part][i - 1].own)
            if s:
                send.append((q, *s))
        out.append(Exchange(tuple(recv), tuple(send)))
    return tuple(out)


def part_sizes(spec: NetSpec, parts: int) -> list[int]:
    """Parameters of each partition."""
    return [sum(lp.n_params for lp in layers) for layers in plan(spec, parts)]


def part_ranges(spec: NetSpec, parts: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` of each partition's parameters in the partition-major flat vector."""
    out, off = [], 0
    for n in part_sizes(spec, parts):
        out.append((off, off + n))
        off += n
    return out


def local_views(spec: NetSpec, parts: int, part: int, flat: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(W, b)`` views of each layer's local parameters in ``flat``: partition ``part``'s (n_local,) vector."""
    layers = plan(spec, parts)[part]
    n = sum(lp.n_params for lp in layers)
    if flat.shape != (n,) or flat.dtype != np.float32:
        raise ValueError(f"partition {part} of {parts} holds {n} float32 parameters, got {flat.dtype} {flat.shape}")
    out, off = [], 0
    for lp in layers:
        w = flat[off: off + lp.n_w].reshape(lp.w_shape)
        off += lp.n_w
        b = flat[off: off + lp.n_b].reshape(lp.b_shape)
        off += lp.n_b
        out.append((w, b))
    return out


def _canonical_parts(spec: NetSpec, parts: int, part: int, canon: np.ndarray):
    """Views into the canonical vector of what partition ``part`` holds, layer by layer."""
    for layer, lp, (w, b) in zip(spec.layers, plan(spec, parts)[part], param_views(spec, canon)):
        if not lp.n_params:
            yield None, None
        elif isinstance(layer, Dense):
            yield w[:, lp.lo: lp.hi], b[lp.lo: lp.hi]
        else:
            yield w[lp.lo: lp.hi], b[lp.lo: lp.hi]


def to_canonical(spec: NetSpec, parts: int, flat: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The canonical (P = 1) order of a partition-major vector (n_params,) (or of any per-parameter state)."""
    out = np.empty_like(flat) if out is None else out
    if parts == 1:
        out[...] = flat
        return out
    for p, (lo, hi) in enumerate(part_ranges(spec, parts)):
        for (cw, cb), (w, b) in zip(_canonical_parts(spec, parts, p, out), local_views(spec, parts, p, flat[lo:hi])):
            if cw is not None:
                cw[...] = w
                cb[...] = b
    return out


def from_canonical(spec: NetSpec, parts: int, canon: np.ndarray, out: np.ndarray | None = None,
                   part: int | None = None) -> np.ndarray:
    """The partition-major vector of a canonical one; with ``part``, only that partition's (n_local,) range."""
    ranges = part_ranges(spec, parts)
    if part is None:
        out = np.empty_like(canon) if out is None else out
        todo = list(enumerate(ranges))
    else:
        lo, hi = ranges[part]
        out = np.empty(hi - lo, canon.dtype) if out is None else out
        todo = [(part, (0, hi - lo))]
    for p, (lo, hi) in todo:
        for (cw, cb), (w, b) in zip(_canonical_parts(spec, parts, p, canon), local_views(spec, parts, p, out[lo:hi])):
            if cw is not None:
                w[...] = cw
                b[...] = cb
    return out

