"""How long one training step of a model cut into P partitions should take (pure: no MPI, no timing).

The model behind DistBelief's Figure 3 (Dean et al. 2012, section 3: "models
with more parameters benefit more from the use of additional machines than
smaller models"; fully connected models stop scaling early, locally connected
ones scale to many machines): a step is compute that shrinks as 1/P plus
communication that does not.

**Compute.** Partition p's share of layer i's forward flops (its rows of an
image layer, its units of a dense one, from :func:`dbnet.mp.plan.plan`, so
uneven splits count), times ``passes`` (3: forward, weight gradient, input
gradient; 2 for layer 0, which computes no input gradient), times the batch,
divided by the node's rate for that layer kind (:class:`Node`: BLAS for dense
layers, dbnet's kernels for local and pool layers).

**Communication.** From :func:`dbnet.mp.plan.exchanges`: before layer i, the
per-example columns partition p receives and sends, 4 bytes per float, times
the batch; the same volume goes back in the backward pass.  One boundary in
one direction costs ``latency x peers + max(bytes out, bytes in) / bandwidth``
(each peer one message, posted together but each paying its latency here, a
conservative count; the link is full duplex).  Dense layers are all-to-all:
every partition sends its block to P - 1 peers, so per-partition bytes tend
to the whole layer's output and messages grow as P while compute shrinks as
1/P.  The softmax split over classes adds 3 small allreduces per step, each
``ceil(log2 P)`` rounds of latency plus its (B or 2B doubles) bytes.

**Overlap** (as :class:`dbnet.network.Network` does it): forward, an image
layer computes the rows of its band that read no halo (the interior) while
the halo is in flight, so its halo time is hidden up to that interior
compute; its backward exchange and every dense exchange are not overlapped.
``overlap=False`` charges all communication.

**Pace.** Partitions synchronise at every boundary, so a step costs, layer by
layer, the slowest partition's compute + exposed communication, summed over
layers, plus the softmax's reductions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dbnet.model import Dense, Local, NetSpec, Pool
from dbnet.mp.plan import exchanges, plan

BYTES_PER_FLOAT = 4


@dataclass(frozen=True)
class Node:
    """One machine (one partition): sustained GFLOP/s on dense layers (BLAS) and on local/pool kernels."""

    dense_gflops: float
    local_gflops: float
    pool_gflops: float | None = None  # None: the local rate

    def __post_init__(self):
        for name in ("dense_gflops", "local_gflops"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Node.{name} must be > 0 GFLOP/s, got {getattr(self, name)!r}")

    def rate(self, layer) -> float:
        """FLOP/s for ``layer``."""
        if isinstance(layer, Dense):
            return self.dense_gflops * 1e9
        if isinstance(layer, Pool) and self.pool_gflops:
            return self.pool_gflops * 1e9
        return self.local_gflops * 1e9


@dataclass(frozen=True)
class Link:
    """The network between partitions: one-way latency per message (s) and bandwidth (Gbit/s)."""

    latency_s: float
    gbit_s: float

    def __post_init__(self):
        if self.latency_s < 0 or not self.gbit_s > 0:
            raise ValueError(f"Link needs latency_s >= 0 and gbit_s > 0, got {self.latency_s!r}, {self.gbit_s!r}")

    @property
    def bytes_per_s(self) -> float:
        return self.gbit_s * 1e9 / 8

    def time(self, messages: int, nbytes: float) -> float:
        return messages * self.latency_s + nbytes / self.bytes_per_s


def passes(i: int) -> int:
    """Matrix passes of layer i per step: forward, weight gradient, input gradient (none for layer 0)."""
    return 3 if i else 2


def _share(layer, lp) -> float:
    """Fraction of ``layer``'s forward flops that a partition owning ``lp`` computes."""
    if isinstance(layer, Dense):
        return (lp.hi - lp.lo) / layer.n_out
    return lp.rows / layer.out_shape[0]


def _interior_rows(layer, lp, prev) -> int:
    """Output rows of an image layer's band that read only the partition's own input rows (cf. Network._interior)."""
    s, k = layer.stride, layer.k
    lo = max(lp.lo, -(-prev.lo // s))
    hi = min(lp.hi, (prev.hi - k) // s + 1)
    return max(0, hi - lo)


def layer_flops(spec: NetSpec, parts: int, part: int, batch: int) -> list[float]:
    """Flops of one step (forward + backward, ``batch`` examples) of each layer on partition ``part``."""
    return [passes(i) * layer.flops() * _share(layer, lp) * batch
            for i, (layer, lp) in enumerate(zip(spec.layers, plan(spec, parts)[part]))]


def traffic(spec: NetSpec, parts: int, part: int, batch: int) -> list[dict]:
    """Per layer boundary, partition ``part``'s messages and bytes in ONE direction (forward; backward mirrors).

    ``peers``: partitions it exchanges with; ``sends``/``recvs``: messages it sends / receives forward
    (backward they swap); ``sent``/``received``: bytes (4 per float x batch).
    """
    out = []
    for ex in exchanges(spec, parts, part):
        sent = sum(hi - lo for _, lo, hi in ex.send) * BYTES_PER_FLOAT * batch
        recv = sum(hi - lo for _, lo, hi in ex.recv) * BYTES_PER_FLOAT * batch
        peers = len({q for q, _, _ in ex.send} | {q for q, _, _ in ex.recv})
        out.append({"peers": peers, "sends": len(ex.send), "recvs": len(ex.recv), "sent": sent, "received": recv})
    return out


def softmax_time(parts: int, batch: int, net: Link) -> float:
    """The split softmax's 3 allreduces (max, argmax, two sums) of per-example doubles: log2 P rounds each."""
    if parts == 1:
        return 0.0
    rounds = math.ceil(math.log2(parts))
    return sum(rounds * net.time(1, n * 8 * batch) for n in (1, 1, 2))


def step_time(spec: NetSpec, parts: int, batch: int, node: Node, net: Link, overlap: bool = True) -> dict:
    """Predicted seconds of one training step (forward + backward of ``batch`` examples) on ``parts`` partitions.

    Returns ``compute``, ``comm`` (exposed communication, softmax included), ``total`` (seconds; each layer
    paced by its slowest partition), ``bytes`` (sent + received) and ``messages`` (sent) of the busiest partition, both passes,
    and ``per_partition``: for each partition its ``compute``, ``comm`` (exposed), ``comm_raw`` (before
    overlap), ``bytes`` and ``messages`` per step.
    """
    if parts < 1 or batch < 1:
        raise ValueError(f"need parts >= 1 and batch >= 1, got {parts}, {batch}")
    P = plan(spec, parts)
    L = len(spec.layers)
    comp = [[0.0] * L for _ in range(parts)]
    comm = [[0.0] * L for _ in range(parts)]
    per = []
    for p in range(parts):
        flops = layer_flops(spec, parts, p, batch)
        tr = traffic(spec, parts, p, batch)
        raw = nbytes = msgs = 0
        for i, layer in enumerate(spec.layers):
            comp[p][i] = flops[i] / node.rate(layer)
            t = tr[i]
            if not t["peers"]:
                continue
            one_way = net.time(t["peers"], max(t["sent"], t["received"]))
            hidden = 0.0
            if overlap and not isinstance(layer, Dense) and P[p][i].rows:
                interior = _interior_rows(layer, P[p][i], P[p][i - 1]) / P[p][i].rows
                hidden = min(one_way, interior * comp[p][i] / passes(i))  # the interior's forward compute
            comm[p][i] = 2 * one_way - hidden
            raw += 2 * one_way
            nbytes += 2 * (t["sent"] + t["received"])
            msgs += t["sends"] + t["recvs"]  # sent forward + sent backward
        per.append({"compute": sum(comp[p]), "comm": sum(comm[p]), "comm_raw": raw, "bytes": nbytes,
                    "messages": msgs})
    sm = softmax_time(parts, batch, net)
    total = sm
    compute = comm_exposed = 0.0
    for i in range(L):
        slow = max(range(parts), key=lambda p: comp[p][i] + comm[p][i])
        total += comp[slow][i] + comm[slow][i]
        compute += max(comp[p][i] for p in range(parts))
        comm_exposed += comm[slow][i]
    for d in per:
        d["comm"] += sm
    busiest = max(per, key=lambda d: d["bytes"])
    return {"compute": compute, "comm": comm_exposed + sm, "total": total, "softmax": sm,
            "bytes": busiest["bytes"], "messages": busiest["messages"], "per_partition": per}


def speedup_curve(spec: NetSpec, parts_list, batch: int, node: Node, net: Link, overlap: bool = True) -> list[dict]:
    """``[{"parts", "total", "compute", "comm", "speedup"}]``: step time and speed-up over P = 1 for each P."""
    base = step_time(spec, 1, batch, node, net, overlap)["total"]
    out = []
    for parts in parts_list:
        t = step_time(spec, parts, batch, node, net, overlap)
        out.append({"parts": parts, "total": t["total"], "compute": t["compute"], "comm": t["comm"],
                    "speedup": base / t["total"]})
    return out


def best(curve: list[dict]) -> dict:
    """The point of ``curve`` with the highest speed-up."""
    return max(curve, key=lambda d: d["speedup"])


def calibrate(spec: NetSpec, batch: int, seconds: float, node: Node) -> Node:
    """``node`` with the rate of the kind that dominates ``spec`` rescaled so that P = 1 takes ``seconds``.

    For a spec with image layers the local (and pool) rate is fitted, keeping ``node.dense_gflops`` for
    its dense head; for an MLP the dense rate is fitted.
    """
    flops = layer_flops(spec, 1, 0, batch)
    dense = sum(f for f, layer in zip(flops, spec.layers) if isinstance(layer, Dense))
    image = sum(flops) - dense
    if not image:
        return Node(dense / seconds / 1e9, node.local_gflops, node.pool_gflops)
    rest = seconds - dense / (node.dense_gflops * 1e9)
    if rest <= 0:
        raise ValueError(f"{seconds:.4g} s is less than the dense head alone takes at {node.dense_gflops} GFLOP/s")
    return Node(node.dense_gflops, image / rest / 1e9, None)
