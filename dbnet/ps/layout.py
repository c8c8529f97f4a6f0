"""Memory layout of a parameter-server shard (pure: every rank computes it alike).

Shard k owns the slice ``shard_slices(n_params, S)[k]`` of the flat parameter
vector, of length n.  It exposes two windows made by ``MPI.Win.Allocate``:

* **data** (float32, displacement unit 4 bytes)::

      [ params (n) | state_0 (n) ... state_{m-1} (n) | inbox slot 0 (n) ... slot K-1 (n) ]

  ``state_i`` are the update rule's arrays (e.g. Adagrad's sums of squares).
  The inbox is a **pool** of K slots shared by all replicas (``ps.inbox_slots``):
  its size does not grow with the number of replicas R.  A shard's memory is
  ``4 * n * (1 + m + K)`` bytes of floats plus ``8 * (HEADER + SLOT_FIELDS*K + R)``
  bytes of counters.

* **ctrl** (int64, displacement unit 8 bytes)::

      [ Ctrl header (HEADER) | K slot blocks of SlotField (SLOT_FIELDS each) | APPLIED count per replica (R) ]

Push protocol (replica side, no lock anywhere: every rank holds one shared
``Lock_all`` epoch on each window for the whole run):

1. claim a slot: ``Compare_and_swap(slot.STATE: FREE -> CLAIMED)``, trying
   slots from ``(replica + push) % K``; none free means the shard is behind:
   back off and retry (bounded by ``comm.timeout_seconds``);
2. ``Put`` the gradient into the slot's data, ``Flush``;
3. write ``OWNER``, ``SEQ`` and ``BASE_VERSION`` (atomic ``Accumulate``), ``Flush``;
4. mark it ``FULL`` (atomic), ``Flush``.

The shard applies FULL slots (a replica's in ``SEQ`` order), then adds 1 to
``APPLIED[owner]``, publishes ``VERSION`` and sets the slot ``FREE`` (atomic
operations on its own window).  A replica stopped between 1 and 4 holds one
slot and no lock: the shard and every other replica go on.

Checkpoint snapshots: the lead sets ``SNAP_REQ = n``; the shard applies what
is FULL, answers ``SNAP_ACK = n`` and pauses its updates until the lead writes
``SNAP_DONE = n`` after reading params and state, or until
``ps.snapshot_seconds`` pass, in which case it sets ``SNAP_BROKEN = n`` before
it updates again and the lead discards that read.  Only the shard pauses.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dbnet.partition import shard_slices


class Ctrl(enum.IntEnum):
    """Header fields of every shard's ctrl window."""

    VERSION = 0      # pushes this shard has applied (its parameter version)
    REJECTED = 1     # pushes rejected because they held NaN or Inf
    SNAP_REQ = 2     # lead: snapshot number requested
    SNAP_ACK = 3     # shard: snapshot number it paused for
    SNAP_DONE = 4    # lead: snapshot number read
    SNAP_BROKEN = 5  # shard: snapshot number it stopped waiting for (the read is void)


HEADER = 8


class SlotField(enum.IntEnum):
    STATE = 0         # SlotState
    OWNER = 1         # replica that filled it
    SEQ = 2           # that replica's push number on this shard (1-based)
    BASE_VERSION = 3  # this shard's VERSION when the gradient's parameters were fetched (staleness)


SLOT_FIELDS = 4


class SlotState(enum.IntEnum):
    FREE = 0
    CLAIMED = 1
    FULL = 2


@dataclass(frozen=True)
class ShardLayout:
    """Offsets of shard ``lo:lo+n``'s windows: data in float32 elements, ctrl in int64 elements."""

    lo: int          # first parameter index owned
    n: int           # parameters owned
    n_state: int     # update-rule state arrays
    slots: int       # inbox pool size K
    replicas: int

    @property
    def hi(self) -> int:
        return self.lo + self.n

    @property
    def data_size(self) -> int:
        return self.n * (1 + self.n_state + self.slots)

    def state_offset(self, i: int) -> int:
        return self.n * (1 + i)

    def slot_offset(self, j: int) -> int:
        """Data offset of inbox slot ``j``."""
        return self.n * (1 + self.n_state + j)

    @staticmethod
    def slot_field(j: int, field: SlotField) -> int:
        """Ctrl index of ``field`` of inbox slot ``j``."""
        return HEADER + j * SLOT_FIELDS + int(field)

    def applied(self, replica: int) -> int:
        """Ctrl index of the count of ``replica``'s pushes this shard consumed (applied or rejected)."""
        return HEADER + self.slots * SLOT_FIELDS + replica

    @property
    def ctrl_size(self) -> int:
        return HEADER + self.slots * SLOT_FIELDS + self.replicas

    @property
    def bytes(self) -> int:
        return 4 * self.data_size + 8 * self.ctrl_size


def shard_layouts(n_params: int, shards: int, n_state: int, slots: int, replicas: int) -> list[ShardLayout]:
    return [ShardLayout(s.start, s.stop - s.start, n_state, slots, replicas) for s in shard_slices(n_params, shards)]
