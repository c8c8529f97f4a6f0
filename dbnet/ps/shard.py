"""A parameter-server shard: applies pushed gradients to its slice with the update rule.

The shard never waits for a replica and holds no lock (see
:mod:`dbnet.ps.layout` for the protocol).  :meth:`ShardServer.serve_once`,
called by the runtime's idle loop with back-off, applies every FULL inbox
slot in chunks of ``apply_chunk`` parameters, with plain stores into its own
window memory, and calls MPI between chunks: on MPI libraries whose
passive-target operations progress only when the target calls MPI (MPICH
without a progress thread) a replica's fetch then waits at most one chunk.

A push covers the part ``[LO, HI)`` of the slice that its client's range
holds (a partition's, or all of it); the shard applies it there only.  The
update rules are element-wise, so applying on a sub-range, in chunks, gives
the bits that applying on the whole would give.

Staleness: a push fetched its parameters at shard version ``BASE_VERSION``;
its staleness is the number of pushes to the **same range** that the shard
applied since (with one partition per replica, simply ``VERSION - BASE``).
Pushes of another partition update disjoint parameters and do not count.

Fetches may see a partly applied update ("no locks, no versions", as in
DistBelief); each float is written whole.  A checkpoint's read is
consistent: the shard pauses its updates while the lead reads (and only the
shard pauses; if the lead takes longer than ``snapshot_seconds`` the shard
goes on and the read is void).
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from dbnet.kernels.updates import count_nonfinite
from dbnet.optim import UpdateRule
from dbnet.ps.layout import HEADER, SLOT_FIELDS, Ctrl, SlotField, SlotState
from dbnet.ps.windows import PSWindows

STALENESS_BINS = 65  # staleness 0..63 and ">= 64"


class ShardServer:
    """This shard's side of the parameter server (one per shard rank).  Not collective."""

    def __init__(self, windows: PSWindows, rule: UpdateRule, params: np.ndarray,
                 state: dict[str, np.ndarray] | None, version: int = 0, apply_chunk: int = 1 << 20,
                 snapshot_seconds: float = 5.0):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = windows.topo.comm
        self.w = windows
        self.rule = rule
        L = self.L = windows.layout
        self.me = windows.topo.rank
        self.apply_chunk = apply_chunk
        self.snapshot_seconds = snapshot_seconds
        data = windows.data.local
        self.params = data[: L.n]
        self.state = {name: data[L.state_offset(i): L.state_offset(i) + L.n] for i, name in enumerate(rule.state_names)}
        self.inbox = [data[L.slot_offset(j): L.slot_offset(j) + L.n] for j in range(L.slots)]
        self.version = version
        self.rejected = 0
        self.staleness = np.zeros(STALENESS_BINS, np.int64)
        # per range pushed to: the versions of its last STALENESS_BINS - 1 applied pushes (enough for the bins)
        self._applied_at: dict[tuple[int, int], deque] = {}
        self.apply_seconds = 0.0
        self.snapshots = self.snapshots_broken = 0
        self.params[:] = params
        for name, arr in self.state.items():
            arr[:] = 0 if state is None else state[name]
        windows.data.sync()
        windows.ctrl.write(self.me, Ctrl.VERSION, version)
        self._slots = np.empty(L.slots * SLOT_FIELDS, np.int64)  # every slot's fields, read atomically
        self._hdr = np.empty(HEADER, np.int64)

    def _progress(self) -> None:
        """Let MPI progress (others' operations on this rank's windows) and publish local stores."""
        self.w.data.sync()
        self.comm.Iprobe()

    def serve_once(self) -> bool:
        """Apply every FULL inbox slot (each client's pushes in order) and answer a snapshot request.

        Returns True if it did anything.  Calls MPI on every pass (progress for MPICH).
        """
        self.comm.Iprobe()
        did = self._apply_full()
        ctrl, me = self.w.ctrl, self.me
        ctrl.read_many(me, 0, self._hdr)
        if self._hdr[Ctrl.SNAP_REQ] > self._hdr[Ctrl.SNAP_ACK]:
            self._snapshot()
            return True
        return did

    def _apply_full(self) -> bool:
        """Apply the slots that are FULL now, ordered by (owner, push number); True if any."""
        self.w.ctrl.read_many(self.me, HEADER, self._slots)
        fields = self._slots.reshape(-1, SLOT_FIELDS)
        full = np.flatnonzero(fields[:, SlotField.STATE] == SlotState.FULL)
        if len(full) > 1:
            full = sorted(full, key=lambda j: (int(fields[j, SlotField.OWNER]), int(fields[j, SlotField.SEQ])))
        for j in full:
            f = fields[j]
            self._apply_slot(int(j), int(f[SlotField.OWNER]), int(f[SlotField.BASE_VERSION]),
                             int(f[SlotField.LO]), int(f[SlotField.HI]))
        return bool(len(full))

    def _apply_slot(self, j: int, owner: int, base: int, lo: int, hi: int) -> None:
        """Apply slot ``j``'s gradient to ``[lo, hi)`` of the slice (slice-relative), or reject it."""
        L, ctrl, me = self.L, self.w.ctrl, self.me
        self.w.data.sync()  # the gradient the client put is visible to our loads
        t0 = time.perf_counter()
        if not 0 <= lo <= hi <= L.n or count_nonfinite(self.inbox[j][lo:hi]):
            self.rejected += 1
            ctrl.write(me, Ctrl.REJECTED, self.rejected)
        else:
            g = self.inbox[j]
            self.staleness[self._stale(base, lo, hi)] += 1
            for a in range(lo, hi, self.apply_chunk):
                b = min(a + self.apply_chunk, hi)
                self.rule.apply(self.params[a:b], g[a:b], {k: v[a:b] for k, v in self.state.items()})
                self._progress()
            self.version += 1
            ctrl.write(me, Ctrl.VERSION, self.version)
        self.apply_seconds += time.perf_counter() - t0
        ctrl.add(me, L.applied(owner), 1)
        ctrl.write(me, L.slot_field(j, SlotField.STATE), SlotState.FREE)

    def _stale(self, base: int, lo: int, hi: int) -> int:
        """The staleness bin of a push to ``[lo, hi)`` fetched at version ``base``, which is about to become
        version ``self.version + 1``: the pushes to that range applied after the fetch (>= 64 in the last bin)."""
        seen = self._applied_at.get((lo, hi))
        if seen is None:
            seen = self._applied_at[(lo, hi)] = deque(maxlen=STALENESS_BINS - 1)
        stale = sum(1 for v in seen if v > base)  # seen holds at most 64 versions
        seen.append(self.version + 1)
        return stale

    def _snapshot(self) -> None:
        """Pause updates while the lead reads params, state and version (bounded by ``snapshot_seconds``)."""
        ctrl, me = self.w.ctrl, self.me
        req = ctrl.read(me, Ctrl.SNAP_REQ)
        # Every push whose examples the lead counted was FULL before it wrote SNAP_REQ: apply those too.
        self._apply_full()
        self._progress()
        ctrl.write(me, Ctrl.SNAP_ACK, req)
        t0 = time.monotonic()
        sleep = 20e-6
        while ctrl.read(me, Ctrl.SNAP_DONE) < req:
            if time.monotonic() - t0 > self.snapshot_seconds:
                ctrl.write(me, Ctrl.SNAP_BROKEN, req)  # before any store: the lead's read is void
                self.snapshots_broken += 1
                return
            self.comm.Iprobe()
            time.sleep(sleep)
            sleep = min(2 * sleep, 1e-3)
        self.snapshots += 1

    def stats(self) -> dict:
        return {
            "shard": self.w.topo.me.shard_id,
            "n_params": self.L.n,
            "inbox_slots": self.L.slots,
            "window_bytes": self.L.bytes,
            "updates_applied": self.version,
            "pushes_rejected": self.rejected,
            "apply_seconds": self.apply_seconds,
            "snapshots": self.snapshots,
            "snapshots_broken": self.snapshots_broken,
            "staleness_histogram": self.staleness.tolist(),
        }
