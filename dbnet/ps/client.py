"""Fetch and push: a replica's (or the lead's) side of the parameter server.

Every operation is a passive-target epoch on one shard (``Lock`` shared,
``Get``/``Put``/``Accumulate``, ``Unlock``), so shards never take part
actively and replicas never synchronize with each other.

Consistency: :meth:`PSClient.fetch` with ``own_writes=True`` first waits
until each shard has consumed this replica's previous push, so a replica
always sees its own updates (with one replica, Downpour is then exactly SGD);
other replicas' updates arrive whenever they arrive, as in DistBelief.
"""

from __future__ import annotations

import time

import numpy as np

from dbnet.mpi import wait_for
from dbnet.ps.layout import INBOX_DEPTH, Ctrl, ReplicaState, Slot, slot
from dbnet.ps.windows import PSWindows


class PSClient:
    """Replica ``replica``'s handle on every shard.  Not collective; not thread-safe."""

    def __init__(self, windows: PSWindows, replica: int, timeout: float):
        from mpi4py import MPI

        self.MPI = MPI
        self.w = windows
        self.topo = windows.topo
        self.r = replica
        self.timeout = timeout
        S = self.topo.shards
        self.ranks = self.topo.shard_ranks
        self.seq = [0] * S            # pushes sent to each shard
        self.base = [0] * S           # each shard's VERSION at our last fetch
        self._i64 = np.zeros(1, np.int64)
        self.fetches = self.pushes = 0
        self.fetch_seconds = self.push_seconds = self.wait_seconds = 0.0
        self.bytes_fetched = self.bytes_pushed = 0

    # -- ctrl fields -------------------------------------------------------
    def read(self, shard: int, index: int) -> int:
        """One int64 of shard ``shard``'s ctrl window."""
        win, rank = self.w.ctrl_win, self.ranks[shard]
        win.Lock(rank, self.MPI.LOCK_SHARED)
        win.Get([self._i64, self.MPI.INT64_T], rank, target=(index, 1, self.MPI.INT64_T))
        win.Unlock(rank)
        return int(self._i64[0])

    def read_many(self, shard: int, index: int, count: int) -> np.ndarray:
        out = np.empty(count, np.int64)
        win, rank = self.w.ctrl_win, self.ranks[shard]
        win.Lock(rank, self.MPI.LOCK_SHARED)
        win.Get([out, self.MPI.INT64_T], rank, target=(index, count, self.MPI.INT64_T))
        win.Unlock(rank)
        return out

    def write(self, shard: int, index: int, value: int, op=None) -> None:
        """Atomically replace (or ``op``-combine) one int64 of shard ``shard``'s ctrl window."""
        buf = np.array([value], np.int64)
        win, rank = self.w.ctrl_win, self.ranks[shard]
        win.Lock(rank, self.MPI.LOCK_SHARED)
        win.Accumulate([buf, self.MPI.INT64_T], rank, target=(index, 1, self.MPI.INT64_T),
                       op=op or self.MPI.REPLACE)
        win.Unlock(rank)

    def write_all_shards(self, index: int, value: int) -> None:
        for k in range(self.topo.shards):
            self.write(k, index, value)

    def stop_requested(self) -> bool:
        return bool(self.read(0, Ctrl.STOP))

    def set_state(self, state: ReplicaState) -> None:
        self.write(0, slot(self.r, Slot.STATE), int(state))

    def report_position(self, epoch: int, batch: int, step: int, examples: int) -> None:
        """Store this replica's data position on shard 0 (for checkpoints)."""
        buf = np.array([epoch, batch, step, examples], np.int64)
        win, rank = self.w.ctrl_win, self.ranks[0]
        win.Lock(rank, self.MPI.LOCK_SHARED)
        win.Accumulate([buf, self.MPI.INT64_T], rank, target=(slot(self.r, Slot.EPOCH), 4, self.MPI.INT64_T),
                       op=self.MPI.REPLACE)
        win.Unlock(rank)

    def _wait_applied(self, k: int, lag: int = 0) -> None:
        """Wait until shard ``k`` has consumed all but ``lag`` of this replica's pushes."""
        if self.seq[k] <= lag:
            return
        index = slot(self.r, Slot.APPLIED_SEQ)
        target = self.seq[k] - lag
        self.wait_seconds += wait_for(lambda: self.read(k, index) >= target, self.timeout,
                                      f"shard {k} to apply replica {self.r}'s push {target}")

    # -- parameters --------------------------------------------------------
    def fetch(self, out: np.ndarray, own_writes: bool = True, count: bool = True) -> None:
        """Copy every shard's current parameters into ``out`` (n_params,) float32.

        ``count=False`` keeps the fetch out of this replica's statistics (the lead's evaluations).
        """
        t0 = time.perf_counter()
        MPI = self.MPI
        for k, (L, rank) in enumerate(zip(self.w.layouts, self.ranks)):
            if own_writes:
                self._wait_applied(k)
            self.base[k] = self.read(k, Ctrl.VERSION)
            self.w.data_win.Lock(rank, MPI.LOCK_SHARED)
            self.w.data_win.Get([out[L.lo: L.hi], MPI.FLOAT], rank, target=(0, L.n, MPI.FLOAT))
            self.w.data_win.Unlock(rank)
        if count:
            self.fetches += 1
            self.bytes_fetched += out.nbytes
            self.fetch_seconds += time.perf_counter() - t0

    def push(self, grad: np.ndarray, examples: int) -> None:
        """Send ``grad`` (n_params,) float32 to the shards' slots; count ``examples`` on shard 0."""
        t0 = time.perf_counter()
        MPI = self.MPI
        for k, (L, rank) in enumerate(zip(self.w.layouts, self.ranks)):
            self._wait_applied(k, lag=INBOX_DEPTH - 1)  # a free inbox slot
            push = self.seq[k] + 1
            self.w.data_win.Lock(rank, MPI.LOCK_SHARED)
            self.w.data_win.Put([grad[L.lo: L.hi], MPI.FLOAT], rank,
                                target=(L.inbox_offset(self.r, push), L.n, MPI.FLOAT))
            self.w.data_win.Unlock(rank)  # the gradient is in place before the slot is marked full
            win = self.w.ctrl_win
            win.Lock(rank, MPI.LOCK_SHARED)
            win.Accumulate([np.array([self.base[k]], np.int64), MPI.INT64_T], rank,
                           target=(slot(self.r, Slot.BASE_VERSION) + (push - 1) % INBOX_DEPTH, 1, MPI.INT64_T),
                           op=MPI.REPLACE)
            win.Flush(rank)
            self.seq[k] = push
            win.Accumulate([np.array([self.seq[k]], np.int64), MPI.INT64_T], rank,
                           target=(slot(self.r, Slot.PUSH_SEQ), 1, MPI.INT64_T), op=MPI.REPLACE)
            win.Unlock(rank)
        self.write(0, Ctrl.EXAMPLES, examples, op=MPI.SUM)
        self.pushes += 1
        self.bytes_pushed += grad.nbytes
        self.push_seconds += time.perf_counter() - t0

    def drain(self) -> None:
        """Wait until every shard has consumed this replica's pushes."""
        for k in range(self.topo.shards):
            self._wait_applied(k)

    def read_full_state(self, params: np.ndarray, states: dict[str, np.ndarray], state_names) -> list[int]:
        """Copy every shard's parameters and update-rule state (for checkpoints); returns the shards' versions."""
        MPI = self.MPI
        versions = []
        for k, (L, rank) in enumerate(zip(self.w.layouts, self.ranks)):
            versions.append(self.read(k, Ctrl.VERSION))
            self.w.data_win.Lock(rank, MPI.LOCK_SHARED)
            self.w.data_win.Get([params[L.lo: L.hi], MPI.FLOAT], rank, target=(0, L.n, MPI.FLOAT))
            for i, name in enumerate(state_names):
                self.w.data_win.Get([states[name][L.lo: L.hi], MPI.FLOAT], rank,
                                    target=(L.state_offset(i), L.n, MPI.FLOAT))
            self.w.data_win.Unlock(rank)
        return versions

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
