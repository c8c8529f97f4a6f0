"""Moving activations and their gradients between the partitions of one replica.

Each layer boundary has an :class:`~dbnet.mp.plan.Exchange` (who sends which
per-example columns to whom).  Forward, a partition sends every block of its
output that another partition needs (once per remote partition) and receives
the blocks it needs; backward, the gradients of the received blocks travel
back and their owner adds them into its own gradient.  Blocks are packed into
preallocated contiguous buffers (a band of NHWC rows is strided across the
batch) and moved with ``Isend``/``Irecv`` on the replica's communicator, so
the caller can compute while they are in flight; every wait is bounded by the
job's timeout and polls (a partner that died or stopped cannot hang us
silently).
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from dbnet.errors import PartnerLost
from dbnet.mpi import WaitTimeout, wait_for

F32 = np.float32

#: Point-to-point tags on a replica's communicator: layer i's forward blocks use ``TAG_BASE + 2 i``,
#: their gradients ``TAG_BASE + 2 i + 1`` (nothing else sends point to point on that communicator).
TAG_BASE = 16


def layer_tag(i: int) -> int:
    """The forward tag of the boundary before layer ``i`` (the backward one is this + 1)."""
    return TAG_BASE + 2 * i


def wait_all(reqs: list, timeout: float, what: str) -> None:
    """Complete ``reqs``: spin briefly (the partner is usually a step away), then poll with back-off.

    Raises :class:`~dbnet.errors.PartnerLost` after ``timeout`` seconds of this rank's running time
    (a partner that was stopped, or hangs): the caller's replica is lost, not the job, and its
    communicator is not used again (its requests are freed, not completed).
    """
    if not reqs:
        return
    t_end = time.perf_counter() + 2e-3
    while time.perf_counter() < t_end:
        if MPI.Request.Testall(reqs):
            return
    try:
        wait_for(lambda: MPI.Request.Testall(reqs), timeout, what, max_sleep=2e-4)
    except WaitTimeout as e:
        for r in reqs:  # a receive is cancelled; a send may not be (MPI-4): free it, never wait on it again
            try:
                r.Cancel()
                r.Free()
            except MPI.Exception:
                pass
        raise PartnerLost(f"{e} (a partition of this replica stopped answering)") from None


class Channel:
    """The traffic of one layer boundary for one partition: forward blocks in, gradient blocks back.

    ``need0``: the first input column this partition's layer reads (the receive
    buffer's column 0); ``own0``: the first output column the previous layer owns
    here.  ``tag`` keeps boundaries apart.  Not collective by itself: the partners
    named in the exchange must make the matching calls in the same order.
    """

    def __init__(self, comm, ex, max_batch: int, need0: int, own0: int, tag: int, timeout: float, stats: dict,
                 kind: str):
        self.comm, self.ex, self.tag, self.timeout = comm, ex, tag, timeout
        self.need0, self.own0 = need0, own0
        self.stats, self.kind = stats, kind  # kind: "halo" or "gather" (the statistics' name)
        self._send = [np.empty(max_batch * (hi - lo), F32) for _, lo, hi in ex.send]
        self._recv = [np.empty(max_batch * (hi - lo), F32) for _, lo, hi in ex.recv]
        self._reqs: list = []

    # forward: own output blocks out, needed input blocks in
    def start_forward(self, out: np.ndarray, n: int) -> None:
        """Post the receives and send the needed blocks of ``out`` (n, own cols) of the previous layer."""
        reqs = []
        for buf, (q, lo, hi) in zip(self._recv, self.ex.recv):
            reqs.append(self.comm.Irecv([buf[: n * (hi - lo)], MPI.FLOAT], q, self.tag))
        for buf, (q, lo, hi) in zip(self._send, self.ex.send):
            b = buf[: n * (hi - lo)].reshape(n, hi - lo)
            np.copyto(b, out[:n, lo - self.own0: hi - self.own0])
            reqs.append(self.comm.Isend([b, MPI.FLOAT], q, self.tag))
            self.stats[f"{self.kind}_bytes"] += b.nbytes
        self._reqs = reqs
        self._t0 = time.perf_counter()

    def finish_forward(self, inp: np.ndarray, n: int) -> None:
        """Wait, then unpack the received blocks into ``inp`` (n, need cols)."""
        t0 = time.perf_counter()
        wait_all(self._reqs, self.timeout, f"the {self.kind} activations of partitions "
                                           f"{[q for q, _, _ in self.ex.recv]}")
        self.stats[f"{self.kind}_seconds"] += time.perf_counter() - t0
        for buf, (q, lo, hi) in zip(self._recv, self.ex.recv):
            np.copyto(inp[:n, lo - self.need0: hi - self.need0], buf[: n * (hi - lo)].reshape(n, hi - lo))
        self._reqs = []

    # backward: gradients of received blocks go back, gradients of sent blocks come in and are added
    def start_backward(self, din: np.ndarray, n: int) -> None:
        reqs = []
        for buf, (q, lo, hi) in zip(self._send, self.ex.send):  # q computed a gradient of my block [lo, hi)
            reqs.append(self.comm.Irecv([buf[: n * (hi - lo)], MPI.FLOAT], q, self.tag + 1))
        for buf, (q, lo, hi) in zip(self._recv, self.ex.recv):
            b = buf[: n * (hi - lo)].reshape(n, hi - lo)
            np.copyto(b, din[:n, lo - self.need0: hi - self.need0])
            reqs.append(self.comm.Isend([b, MPI.FLOAT], q, self.tag + 1))
            self.stats[f"{self.kind}_bytes"] += b.nbytes
        self._reqs = reqs

    def finish_backward(self, dout: np.ndarray, n: int) -> None:
        """Wait, then add the partners' gradients of my blocks into ``dout`` (n, own cols), in partner order."""
        t0 = time.perf_counter()
        wait_all(self._reqs, self.timeout, f"the {self.kind} gradients of partitions "
                                           f"{[q for q, _, _ in self.ex.send]}")
        self.stats[f"{self.kind}_seconds"] += time.perf_counter() - t0
        for buf, (q, lo, hi) in zip(self._send, self.ex.send):
            dout[:n, lo - self.own0: hi - self.own0] += buf[: n * (hi - lo)].reshape(n, hi - lo)
        self._reqs = []
