"""A parameter-server shard: applies pushed gradients to its slice with the update rule.

The shard never blocks on a replica.  Its service loop (:meth:`ShardServer.serve_once`,
called by the algorithm's loop with back-off when idle) scans the push slots,
applies each pending gradient in chunks of ``apply_chunk`` parameters, and
calls MPI between chunks.  That matters on MPI libraries whose passive-target
operations only progress when the target calls MPI (MPICH without an
asynchronous progress thread): a replica's fetch waits at most one chunk.

Each chunk is applied under an exclusive lock of the shard's own window, so
a fetch (a shared-lock ``Get``) sees each chunk either before or after an
update, never half-written.  Across chunks there is no consistency, as in
DistBelief ("no locks, no versions").
"""

from __future__ import annotations

import time

import numpy as np

from dbnet.kernels.updates import count_nonfinite
from dbnet.optim import UpdateRule
from dbnet.ps.layout import INBOX_DEPTH, Ctrl, Slot, slot
from dbnet.ps.windows import PSWindows

STALENESS_BINS = 65  # staleness 0..63 and ">= 64"


class ShardServer:
    """Shard ``windows.layout``'s side of the parameter server (one per shard rank)."""

    def __init__(self, windows: PSWindows, rule: UpdateRule, params: np.ndarray,
                 state: dict[str, np.ndarray] | None, version: int = 0, apply_chunk: int = 1 << 20):
        from mpi4py import MPI

        self.MPI = MPI
        self.w = windows
        self.rule = rule
        L = windows.layout
        self.n = L.n
        self.replicas = L.replicas
        self.me = windows.topo.rank
        self.apply_chunk = apply_chunk
        data = windows.data
        self.params = data[: L.n]
        self.state = {name: data[L.state_offset(i): L.state_offset(i) + L.n] for i, name in enumerate(rule.state_names)}
        self.inbox = [[data[L.inbox_offset(r, p): L.inbox_offset(r, p) + L.n] for p in range(1, INBOX_DEPTH + 1)]
                      for r in range(L.replicas)]
        self.version = version
        self.rejected = 0
        self.staleness = np.zeros(STALENESS_BINS, np.int64)
        self.apply_seconds = 0.0
        self._ctrl = np.empty_like(windows.ctrl)
        with self._locked(windows.data_win):
            self.params[:] = params
            for name, arr in self.state.items():
                arr[:] = 0 if state is None else state[name]
        with self._locked(windows.ctrl_win):
            windows.ctrl[Ctrl.VERSION] = version

    def _locked(self, win):
        return _SelfLock(win, self.me, self.MPI.LOCK_EXCLUSIVE)

    def snapshot(self) -> np.ndarray:
        """A copy of this shard's ctrl window (read under its lock)."""
        with self._locked(self.w.ctrl_win):
            self._ctrl[:] = self.w.ctrl
        return self._ctrl

    def set_ctrl(self, index: int, value: int) -> None:
        with self._locked(self.w.ctrl_win):
            self.w.ctrl[index] = value

    def stop_requested(self) -> bool:
        return bool(self.snapshot()[Ctrl.STOP])

    def serve_once(self) -> bool:
        """Apply every pending push, in order per replica; True if there was any."""
        ctrl = self.snapshot()
        did = False
        for r in range(self.replicas):
            pushed = int(ctrl[slot(r, Slot.PUSH_SEQ)])
            applied = int(ctrl[slot(r, Slot.APPLIED_SEQ)])
            while applied < pushed:
                applied += 1
                k = (applied - 1) % INBOX_DEPTH
                # staleness: updates applied since the replica fetched the parameters it computed on
                stale = self.version - int(ctrl[slot(r, Slot.BASE_VERSION) + k])
                self.staleness[min(max(stale, 0), STALENESS_BINS - 1)] += 1
                t0 = time.perf_counter()
                self._apply(self.inbox[r][k])
                self.apply_seconds += time.perf_counter() - t0
                with self._locked(self.w.ctrl_win):
                    live = self.w.ctrl
                    live[slot(r, Slot.APPLIED_SEQ)] = applied
                    live[Ctrl.VERSION] = self.version
                    live[Ctrl.REJECTED] = self.rejected
                did = True
        return did

    def _apply(self, g: np.ndarray) -> None:
        with self._locked(self.w.data_win):
            bad = count_nonfinite(g)
        if bad:
            self.rejected += 1
            return
        step = self.apply_chunk
        for lo in range(0, self.n, step):
            hi = min(lo + step, self.n)
            with self._locked(self.w.data_win):
                self.rule.apply(self.params[lo:hi], g[lo:hi], {k: v[lo:hi] for k, v in self.state.items()})
        self.version += 1

    def stats(self) -> dict:
        return {
            "shard": self.w.topo.me.shard_id,
            "n_params": self.n,
            "updates_applied": self.version,
            "pushes_rejected": self.rejected,
            "apply_seconds": self.apply_seconds,
            "staleness_histogram": self.staleness.tolist(),
        }


class _SelfLock:
    """``with``-able MPI passive-target lock of this rank's own window."""

    __slots__ = ("win", "rank", "kind")

    def __init__(self, win, rank, kind):
        self.win, self.rank, self.kind = win, rank, kind

    def __enter__(self):
        self.win.Lock(self.rank, self.kind)

    def __exit__(self, *exc):
        self.win.Unlock(self.rank)
