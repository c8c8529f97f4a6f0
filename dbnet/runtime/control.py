"""The job's control plane: a small int64 window on the lead rank, and liveness.

Layout (``Field`` header, then one ``RankField`` block per world rank)::

    [ STOP STARTED EXAMPLES HEARTBEAT STOP_CODE . . . | rank 0: STATE BEAT STEP . | rank 1: ... ]

* ``STOP`` (lead writes 1): every rank finishes its work and enters the shutdown.
* ``STARTED`` (lead): warmstart is over; waiting replicas start.
* ``EXAMPLES``: training examples of all replicas (replicas add after each push).
* ``HEARTBEAT``: bumped by the lead about twice a second; every other rank
  watches it (:class:`Liveness`) whenever it waits for the lead.
* per rank: ``STATE`` (:class:`RankState`), ``BEAT`` (bumped by the rank: the
  lead names a rank that went silent), ``STEP`` (a replica's own step count:
  its data position, for checkpoints).

Every access is an atomic MPI operation in the window's ``Lock_all`` epoch
(:mod:`dbnet.rma`): nobody locks it, so a stopped rank stalls no one.
Creation and :meth:`Control.free` are collective over ``topo.comm``.
"""

from __future__ import annotations

import enum
import time

import numpy as np

from dbnet.mpi import Deadline, WaitTimeout
from dbnet.rma import Window


class Field(enum.IntEnum):
    STOP = 0
    STARTED = 1
    EXAMPLES = 2
    HEARTBEAT = 3


HEADER = 8


class RankField(enum.IntEnum):
    STATE = 0
    BEAT = 1
    STEP = 2


RANK_FIELDS = 4


class RankState(enum.IntEnum):
    STARTING = 0
    RUNNING = 1
    DONE = 2
    FAILED = 3


class Control:
    """This rank's handle on the control window hosted by ``topo.lead_rank``.  Not thread-safe."""

    def __init__(self, topo):
        self.topo = topo
        self.lead = topo.lead_rank
        size = HEADER + RANK_FIELDS * topo.size
        self.win = Window(topo.comm, size if topo.rank == self.lead else 0, np.int64)
        self._beat = 0
        self._last_beat = 0.0

    @staticmethod
    def rank_field(rank: int, field: RankField) -> int:
        return HEADER + RANK_FIELDS * rank + int(field)

    def read(self, field: Field) -> int:
        return self.win.read(self.lead, field)

    def write(self, field: Field, value: int) -> None:
        self.win.write(self.lead, field, value)

    def add_examples(self, n: int) -> int:
        """Count ``n`` more training examples; returns the job's new total."""
        return self.win.add(self.lead, Field.EXAMPLES, n)

    def stop_requested(self) -> bool:
        return bool(self.read(Field.STOP))

    def set_state(self, state: RankState, rank: int | None = None) -> None:
        self.win.write(self.lead, self.rank_field(self.topo.rank if rank is None else rank, RankField.STATE), int(state))

    def state_of(self, rank: int) -> RankState:
        return RankState(self.win.read(self.lead, self.rank_field(rank, RankField.STATE)))

    def set_step(self, step: int) -> None:
        self.win.write(self.lead, self.rank_field(self.topo.rank, RankField.STEP), step)

    def step_of(self, rank: int) -> int:
        return self.win.read(self.lead, self.rank_field(rank, RankField.STEP))

    def beat_of(self, rank: int) -> int:
        return self.win.read(self.lead, self.rank_field(rank, RankField.BEAT))

    def beat(self, period: float = 0.5) -> None:
        """Bump this rank's BEAT (and the job's HEARTBEAT on the lead) at most every ``period`` seconds."""
        now = time.monotonic()
        if now - self._last_beat < period:
            return
        self._last_beat = now
        self._beat += 1
        self.win.write(self.lead, self.rank_field(self.topo.rank, RankField.BEAT), self._beat)
        if self.topo.is_lead:
            self.write(Field.HEARTBEAT, self._beat)

    def free(self) -> None:
        """Collective over ``topo.comm``."""
        self.win.free()


class Liveness:
    """Raises :class:`WaitTimeout` if a counter stops changing for ``timeout`` seconds.

    ``read()`` is called at most every ``period`` seconds, so idle loops do
    not flood the lead with reads.

    Only this process's running time counts (:class:`~dbnet.mpi.Deadline`):
    a rank that was itself stopped does not blame the one it watches.
    """

    def __init__(self, read, timeout: float, what: str, period: float = 0.1):
        self.read, self.timeout, self.what, self.period = read, timeout, what, period
        self.value, self.deadline, self.last = None, Deadline(timeout), 0.0

    def check(self, doing: str) -> None:
        now = time.monotonic()
        if now - self.last < self.period:
            return
        self.last = now
        v = self.read()
        if v != self.value:
            self.value, self.deadline = v, Deadline(self.timeout)
        elif self.deadline.expired():
            raise WaitTimeout(f"no sign of life from {self.what} for {self.timeout:g} s while {doing}")


def lead_liveness(control: Control, timeout: float) -> Liveness:
    return Liveness(lambda: control.read(Field.HEARTBEAT), timeout, f"the lead (rank {control.lead})")
