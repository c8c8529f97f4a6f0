"""Fetch and push: a replica's (or the lead's) side of the parameter server.

Every operation is a passive-target epoch on one shard (``Lock``,
``Get``/``Put``/``Accumulate``/``Fetch_and_op``, ``Unlock``), so shards never
take part actively and replicas never synchronize with each other.

* Single control fields are read with ``Fetch_and_op(NO_OP)`` and written
  with ``Accumulate``, which the MPI standard makes atomic per element (a
  plain ``Get`` racing an ``Accumulate`` is undefined).  Multi-field reads
  (a replica's position) take an exclusive lock, so they are never torn.
* :meth:`PSClient.fetch` returns the shard versions its parameters came
  from; :meth:`PSClient.push` takes them back, so the shard's staleness count
  refers to the parameters the gradient was really computed on.
* Every origin buffer stays alive until its epoch's ``Unlock``.

Consistency: ``fetch(own_writes=True)`` first waits until each shard has
consumed this replica's previous pushes, so a replica sees its own updates
(with one replica, Downpour is then exactly SGD); other replicas' updates
arrive whenever they arrive, as in DistBelief.
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
        self.seq = [0] * S  # pushes sent to each shard
        self._one = np.zeros(1, np.int64)     # origin of single-field writes
        self._two = np.zeros(1, np.int64)     # a second one, for two writes in one epoch
        self._result = np.zeros(1, np.int64)  # result of Fetch_and_op
        self._pos = np.zeros(4, np.int64)
        self.fetches = self.pushes = 0
        self.fetch_seconds = self.push_seconds = self.wait_seconds = 0.0
        self.bytes_fetched = self.bytes_pushed = 0

    # -- ctrl fields -------------------------------------------------------
    def _fetch_and_op(self, shard: int, index: int, value: int, op) -> int:
        win, rank, MPI = self.w.ctrl_win, self.ranks[shard], self.MPI
        self._one[0] = value
        win.Lock(rank, MPI.LOCK_SHARED)
        win.Fetch_and_op([self._one, MPI.INT64_T], [self._result, MPI.INT64_T], rank, index, op=op)
        win.Unlock(rank)
        return int(self._result[0])

    def read(self, shard: int, index: int) -> int:
        """One int64 of shard ``shard``'s ctrl window (atomic)."""
        return self._fetch_and_op(shard, index, 0, self.MPI.NO_OP)

    def add(self, shard: int, index: int, value: int) -> int:
        """Atomically add ``value`` to a ctrl field; returns the new value."""
        return self._fetch_and_op(shard, index, value, self.MPI.SUM) + value

    def read_many(self, shard: int, index: int, count: int) -> np.ndarray:
        """``count`` consecutive int64 of a ctrl window, read under an exclusive lock (never torn)."""
        out = np.empty(count, np.int64)
        win, rank = self.w.ctrl_win, self.ranks[shard]
        win.Lock(rank, self.MPI.LOCK_EXCLUSIVE)
        win.Get([out, self.MPI.INT64_T], rank, target=(index, count, self.MPI.INT64_T))
        win.Unlock(rank)
        return out

    def write(self, shard: int, index: int, value: int) -> None:
        """Atomically replace one int64 of shard ``shard``'s ctrl window."""
        self._fetch_and_op(shard, index, value, self.MPI.REPLACE)

    def write_all_shards(self, index: int, value: int) -> None:
        for k in range(self.topo.shards):
            self.write(k, index, value)

    def stop_requested(self) -> bool:
        return bool(self.read(0, Ctrl.STOP))

    def set_state(self, state: ReplicaState) -> None:
        self.write(0, slot(self.r, Slot.STATE), int(state))

    def report_position(self, epoch: int, batch: int, step: int, examples: int) -> None:
        """Store this replica's data position on shard 0 (for checkpoints)."""
        self._pos[:] = (epoch, batch, step, examples)
        win, rank = self.w.ctrl_win, self.ranks[0]
        win.Lock(rank, self.MPI.LOCK_SHARED)
        win.Accumulate([self._pos, self.MPI.INT64_T], rank, target=(slot(self.r, Slot.EPOCH), 4, self.MPI.INT64_T),
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
    def fetch(self, out: np.ndarray, own_writes: bool = True, count: bool = True) -> list[int]:
        """Copy every shard's current parameters into ``out`` (n_params,) float32.

        Returns each shard's version (updates applied) read just before its
        slice, to pass to :meth:`push` with gradients computed on ``out``.
        ``count=False`` keeps the fetch out of this replica's statistics (the
        lead's evaluations).
        """
        t0 = time.perf_counter()
        MPI = self.MPI
        versions = []
        for k, (L, rank) in enumerate(zip(self.w.layouts, self.ranks)):
            if own_writes:
                self._wait_applied(k)
            versions.append(self.read(k, Ctrl.VERSION))
            self.w.data_win.Lock(rank, MPI.LOCK_SHARED)
            self.w.data_win.Get([out[L.lo: L.hi], MPI.FLOAT], rank, target=(0, L.n, MPI.FLOAT))
            self.w.data_win.Unlock(rank)
        if count:
            self.fetches += 1
            self.bytes_fetched += out.nbytes
            self.fetch_seconds += time.perf_counter() - t0
        return versions

    def push(self, grad: np.ndarray, examples: int, base: list[int]) -> int:
        """Send ``grad`` (n_params,) float32, computed on parameters of shard versions ``base``.

        Counts ``examples`` on shard 0 and returns the job's new total of
        examples (all replicas), so a replica can stop itself at a limit.
        """
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
            self._one[0], self._two[0] = base[k], push
            win.Lock(rank, MPI.LOCK_SHARED)
            win.Accumulate([self._one, MPI.INT64_T], rank,
                           target=(slot(self.r, Slot.BASE_VERSION) + (push - 1) % INBOX_DEPTH, 1, MPI.INT64_T),
                           op=MPI.REPLACE)
            win.Flush(rank)  # the base version lands before the sequence number announces the push
            win.Accumulate([self._two, MPI.INT64_T], rank, target=(slot(self.r, Slot.PUSH_SEQ), 1, MPI.INT64_T),
                           op=MPI.REPLACE)
            win.Unlock(rank)
            self.seq[k] = push
        total = self.add(0, Ctrl.EXAMPLES, examples)
        self.pushes += 1
        self.bytes_pushed += grad.nbytes
        self.push_seconds += time.perf_counter() - t0
        return total

    def drain(self) -> None:
        """Wait until every shard has consumed this replica's pushes."""
        for k in range(self.topo.shards):
            self._wait_applied(k)

    def read_full_state(self, params: np.ndarray, states: dict[str, np.ndarray], state_names) -> list[int]:
        """Copy every shard's parameters and update-rule state (for checkpoints); returns the shards' versions.

        Each shard's slice, state and version are read in one exclusive epoch, so they agree.
        """
        MPI = self.MPI
        versions = []
        for k, (L, rank) in enumerate(zip(self.w.layouts, self.ranks)):
            self.w.data_win.Lock(rank, MPI.LOCK_EXCLUSIVE)
            self.w.data_win.Get([params[L.lo: L.hi], MPI.FLOAT], rank, target=(0, L.n, MPI.FLOAT))
            for i, name in enumerate(state_names):
                self.w.data_win.Get([states[name][L.lo: L.hi], MPI.FLOAT], rank,
                                    target=(L.state_offset(i), L.n, MPI.FLOAT))
            versions.append(self.read(k, Ctrl.VERSION))
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
