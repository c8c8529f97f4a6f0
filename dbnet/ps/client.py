"""Fetch, push and snapshot: a replica's (or the lead's) side of the parameter server.

No operation takes a lock (see :mod:`dbnet.ps.layout` for the protocol):
fetches are ``Get`` + ``Flush``; a push claims a free inbox slot with
``Compare_and_swap``, puts the gradient and marks the slot full.  The only
waits are for the *shard* (a free slot; with ``own_writes``, the shard to
have applied this replica's previous pushes), each bounded by ``timeout``.

:meth:`PSClient.fetch` returns the shard versions its parameters came from;
:meth:`PSClient.push` takes them back, so the shard's staleness count refers
to the parameters the gradient was really computed on.
"""

from __future__ import annotations

import time

import numpy as np

from dbnet.mpi import wait_for
from dbnet.ps.layout import SLOT_FIELDS, Ctrl, SlotField, SlotState
from dbnet.ps.windows import PSWindows


class PSClient:
    """Replica ``replica``'s handle on every shard (the lead uses one too).  Not collective; not thread-safe."""

    def __init__(self, windows: PSWindows, replica: int, timeout: float):
        self.w = windows
        self.topo = windows.topo
        self.r = replica
        self.timeout = timeout
        self.ranks = self.topo.shard_ranks
        self.seq = [0] * self.topo.shards  # pushes sent to each shard
        self._hdr = np.zeros(3, np.int64)  # OWNER, SEQ, BASE_VERSION of a push
        self._slots = np.zeros(max(L.slots for L in windows.layouts) * SLOT_FIELDS, np.int64)
        self.fetches = self.pushes = 0
        self.fetch_seconds = self.push_seconds = self.wait_seconds = 0.0
        self.bytes_fetched = self.bytes_pushed = 0

    # -- parameters --------------------------------------------------------
    def fetch(self, out: np.ndarray, own_writes: bool = True, count: bool = True) -> list[int]:
        """Copy every shard's current parameters into ``out`` (n_params,) float32.

        Returns each shard's version read just before its slice.  With
        ``own_writes`` it first waits until each shard has applied this
        replica's previous pushes (a lone replica is then exactly SGD).
        ``count=False`` keeps the fetch out of the statistics (the lead's evaluations).
        """
        t0 = time.perf_counter()
        versions = []
        for k, (L, rank) in enumerate(zip(self.w.layouts, self.ranks)):
            if own_writes and self.seq[k]:
                self._wait_applied(k)
            versions.append(self.w.ctrl.read(rank, Ctrl.VERSION))
            self.w.data.get(rank, 0, out[L.lo: L.hi])
        if count:
            self.fetches += 1
            self.bytes_fetched += out.nbytes
            self.fetch_seconds += time.perf_counter() - t0
        return versions

    def _wait_applied(self, k: int) -> None:
        L, rank, target = self.w.layouts[k], self.ranks[k], self.seq[k]
        self.wait_seconds += wait_for(lambda: self.w.ctrl.read(rank, L.applied(self.r)) >= target, self.timeout,
                                      f"shard {k} to apply replica {self.r}'s push {target}")

    def _claim(self, k: int) -> int:
        """A free inbox slot of shard ``k``, claimed for this replica (waits only for the shard to free one)."""
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
        """Send ``grad`` (n_params,) float32, computed on parameters of shard versions ``base``."""
        t0 = time.perf_counter()
        ctrl, data = self.w.ctrl, self.w.data
        for k, (L, rank) in enumerate(zip(self.w.layouts, self.ranks)):
            j = self._claim(k)
            data.put(rank, L.slot_offset(j), grad[L.lo: L.hi])  # the gradient lands before the slot is full
            self.seq[k] += 1
            self._hdr[:] = (self.r, self.seq[k], base[k])
            ctrl.write_many(rank, L.slot_field(j, SlotField.OWNER), self._hdr)
            ctrl.write(rank, L.slot_field(j, SlotField.STATE), SlotState.FULL)
        self.pushes += 1
        self.bytes_pushed += grad.nbytes
        self.push_seconds += time.perf_counter() - t0

    def drain(self) -> None:
        """Wait until every shard has consumed this replica's pushes."""
        for k in range(self.topo.shards):
            if self.seq[k]:
                self._wait_applied(k)

    # -- checkpoints (the lead) ------------------------------------------------
    def snapshot(self, params: np.ndarray, states: dict[str, np.ndarray], state_names) -> list[int] | None:
        """Read every shard's parameters, update-rule state and version, each shard paused while read.

        Returns the versions, or None if a shard gave up waiting for the read
        (the copy is then not one consistent state: try again later).
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
