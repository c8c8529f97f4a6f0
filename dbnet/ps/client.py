"""Fetch, push and snapshot: a client's (a replica partition's, or the lead's) side of the parameter server.

No operation takes a lock (see :mod:`dbnet.ps.layout` for the protocol):
fetches are ``Get`` + ``Flush``; a push claims a free inbox slot with
``Compare_and_swap``, puts the gradient and marks the slot full.  The only
waits are for the *shard* (a free slot; with ``own_writes``, the shard to
have applied this client's previous pushes), each bounded by ``timeout``.

A client owns the global range ``[lo, hi)`` of the flat parameter vector
(a whole replica: everything) and talks only to the shards that hold part
of it, :attr:`PSClient.shards`.  :meth:`PSClient.fetch` returns the
versions of those shards (aligned with :attr:`PSClient.shards`) that its
parameters came from; :meth:`PSClient.push` takes them back, so the shard's
staleness count refers to the parameters the gradient was really computed on.
"""

from __future__ import annotations

import time

import numpy as np

from dbnet.mpi import wait_for
from dbnet.ps.layout import SLOT_FIELDS, Ctrl, SlotField, SlotState, overlaps
from dbnet.ps.windows import PSWindows


class PSClient:
    """Client ``client``'s handle on the shards that hold its range ``[lo, hi)`` (``hi=None``: n_params).

    ``client`` is ``windows.client_of(replica, partition)`` (the replica id when
    replicas have one partition); the lead uses a client too, for its
    snapshots (always of the whole vector).  Not collective; not thread-safe.
    """

    def __init__(self, windows: PSWindows, client: int, timeout: float, lo: int = 0, hi: int | None = None):
        self.w = windows
        self.topo = windows.topo
        n_params = windows.n_params
        hi = n_params if hi is None else hi
        if not 0 <= client < windows.clients:
            raise ValueError(f"client must be in [0, {windows.clients}) (replicas x partitions), got {client}")
        if not 0 <= lo <= hi <= n_params:
            raise ValueError(f"range [{lo}, {hi}) must lie in [0, {n_params}) (0 <= lo <= hi <= n_params)")
        self.r = client  # this client's number (the replica id when P = 1)
        self.lo, self.hi, self.n = lo, hi, hi - lo
        self.timeout = timeout
        self.ranks = self.topo.shard_ranks
        self.parts = overlaps(windows.layouts, lo, hi)
        self.shards = [o.shard for o in self.parts]  # the shards this client talks to, in order
        self.seq = [0] * self.topo.shards  # pushes sent to each shard
        self._hdr = np.zeros(5, np.int64)  # OWNER, SEQ, BASE_VERSION, LO, HI of a push
        self._slots = np.zeros(max(L.slots for L in windows.layouts) * SLOT_FIELDS, np.int64)
        self.fetches = self.pushes = 0
        self.fetch_seconds = self.push_seconds = self.wait_seconds = 0.0
        self.bytes_fetched = self.bytes_pushed = 0

    def _check(self, name: str, a: np.ndarray) -> None:
        if a.shape != (self.n,) or a.dtype != np.float32:
            raise ValueError(f"{name} must be float32 of shape ({self.n},) (this client's range "
                             f"[{self.lo}, {self.hi})), got {a.dtype} {a.shape}")

    # -- parameters --------------------------------------------------------
    def fetch(self, out: np.ndarray, own_writes: bool = True, count: bool = True) -> list[int]:
        """Copy the current parameters of this client's range into ``out`` (hi - lo,) float32.

        Returns the version of each shard in :attr:`shards` (in that order),
        read just before its part.  With ``own_writes`` it first waits until
        each of those shards has applied this client's previous pushes (a lone
        replica is then exactly SGD).  ``count=False`` keeps the fetch out of
        the statistics (the lead's evaluations).
        """
        self._check("out", out)
        t0 = time.perf_counter()
        versions = []
        for o in self.parts:
            k = o.shard
            rank = self.ranks[k]
            if own_writes and self.seq[k]:
                self._wait_applied(k)
            versions.append(self.w.ctrl.read(rank, Ctrl.VERSION))
            self.w.data.get(rank, o.lo, out[o.at: o.at + o.hi - o.lo])
        if count:
            self.fetches += 1
            self.bytes_fetched += out.nbytes
            self.fetch_seconds += time.perf_counter() - t0
        return versions

    def _wait_applied(self, k: int) -> None:
        L, rank, target = self.w.layouts[k], self.ranks[k], self.seq[k]
        self.wait_seconds += wait_for(lambda: self.w.ctrl.read(rank, L.applied(self.r)) >= target, self.timeout,
                                      f"shard {k} to apply client {self.r}'s push {target}")

    def _claim(self, k: int) -> int:
        """A free inbox slot of shard ``k``, claimed for this client (waits only for the shard to free one)."""
        L, rank, ctrl = self.w.layouts[k], self.ranks[k], self.w.ctrl
        first = (self.r + self.seq[k]) % L.slots
        order = [(first + i) % L.slots for i in range(L.slots)]
        got: list[int] = []
        fields = self._slots[: L.slots * SLOT_FIELDS]

        def claim() -> bool:
            ctrl.read_many(rank, L.slot_field(0, SlotField.STATE), fields)  # one read, then CAS only FREE ones
            for j in order:
                if fields[j * SLOT_FIELDS + SlotField.STATE] != SlotState.FREE:
                    continue
                if ctrl.cas(rank, L.slot_field(j, SlotField.STATE), SlotState.FREE, SlotState.CLAIMED):
                    got.append(j)
                    return True
            return False

        if not claim():
            self.wait_seconds += wait_for(claim, self.timeout, f"shard {k} to free an inbox slot")
        return got[0]

    def push(self, grad: np.ndarray, base: list[int]) -> None:
        """Send ``grad`` (hi - lo,) float32, the gradient of this client's range, to the shards that hold it.

        ``base``: the versions :meth:`fetch` returned for the parameters it
        was computed on (aligned with :attr:`shards`).
        """
        self._check("grad", grad)
        if len(base) != len(self.parts):
            raise ValueError(f"base must hold one version per shard of this client ({len(self.parts)}), "
                             f"got {len(base)}")
        t0 = time.perf_counter()
        ctrl, data = self.w.ctrl, self.w.data
        for o, b in zip(self.parts, base):
            k = o.shard
            L, rank = self.w.layouts[k], self.ranks[k]
            j = self._claim(k)
            # the gradient lands (at the offsets of the parameters it updates) before the slot is full
            data.put(rank, L.slot_offset(j) + o.lo, grad[o.at: o.at + o.hi - o.lo])
            self.seq[k] += 1
            self._hdr[:] = (self.r, self.seq[k], b, o.lo, o.hi)
            ctrl.write_many(rank, L.slot_field(j, SlotField.OWNER), self._hdr)
            ctrl.write(rank, L.slot_field(j, SlotField.STATE), SlotState.FULL)
        self.pushes += 1
        self.bytes_pushed += grad.nbytes
        self.push_seconds += time.perf_counter() - t0

    def drain(self) -> None:
        """Wait until every shard of this client has consumed its pushes."""
        for k in self.shards:
            if self.seq[k]:
                self._wait_applied(k)

    # -- checkpoints (the lead) ------------------------------------------------
    def snapshot(self, params: np.ndarray, states: dict[str, np.ndarray], state_names) -> list[int] | None:
        """Read every shard's parameters, update-rule state and version, each shard paused while read.

        The whole vector, whatever this client's range: ``params`` and each
        ``states[name]`` are (n_params,) float32.  Returns the versions of
        all shards (in shard order), or None if a shard gave up waiting for
        the read (the copy is then not one consistent state: try again later).
        """
        ctrl, data = self.w.ctrl, self.w.data
        versions = []
        ok = True
        for k, (L, rank) in enumerate(zip(self.w.layouts, self.ranks)):
            n = ctrl.read(rank, Ctrl.SNAP_REQ) + 1  # the lead is the only writer
            ctrl.write(rank, Ctrl.SNAP_REQ, n)
            wait_for(lambda: ctrl.read(rank, Ctrl.SNAP_ACK) >= n, self.timeout, f"shard {k} to pause for a checkpoint")
            data.get(rank, 0, params[L.lo: L.hi])
            for i, name in enumerate(state_names):
                data.get(rank, L.state_offset(i), states[name][L.lo: L.hi])
            versions.append(ctrl.read(rank, Ctrl.VERSION))
            ctrl.write(rank, Ctrl.SNAP_DONE, n)
            ok = ok and ctrl.read(rank, Ctrl.SNAP_BROKEN) != n
        return versions if ok else None

    def stats(self) -> dict:
        return {
            "fetches": self.fetches,
            "pushes": self.pushes,
            "fetch_seconds": self.fetch_seconds,
            "push_seconds": self.push_seconds,
            "wait_seconds": self.wait_seconds,
            "bytes_fetched": self.bytes_fetched,
            "bytes_pushed": self.bytes_pushed,
        }
