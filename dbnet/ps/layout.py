"""Memory layout of a parameter-server shard (pure: every rank computes it alike).

Shard k owns the slice ``shard_slices(n_params, S)[k]`` of the flat parameter
vector, of length n.  The parameter server's **clients** are the
(replica, partition) pairs: client ``c = replica * P + partition`` of
``C = R * P`` (with one partition per replica, client = replica).  Client c
owns one contiguous global range ``[lo, hi)`` of the vector (a replica's
partitions cut it partition-major; a whole replica owns everything), which
overlaps one or a few shards: it fetches from and pushes to those shards
only, and only the overlapping part (:func:`overlaps`).  A shard at a
partition boundary serves the clients of both partitions.

Each shard exposes two windows made by ``MPI.Win.Allocate``:

* **data** (float32, displacement unit 4 bytes)::

      [ params (n) | state_0 (n) ... state_{m-1} (n) | inbox slot 0 (n) ... slot K-1 (n) ]

  ``state_i`` are the update rule's arrays (e.g. Adagrad's sums of squares).
  The inbox is a **pool** of K slots shared by all clients (``ps.inbox_slots``):
  its size does not grow with the number of clients R x P.  A slot holds one
  push: the client's part of it lies at the same offsets as the parameters
  it updates (``[LO, HI)`` of the slot, slice-relative); the rest is unused.
  A shard's memory is ``4 * n * (1 + m + K)`` bytes of floats plus
  ``8 * (HEADER + SLOT_FIELDS*K + R*P)`` bytes of counters.

* **ctrl** (int64, displacement unit 8 bytes)::

      [ Ctrl header (HEADER) | K slot blocks of SlotField (SLOT_FIELDS each) | APPLIED count per client (R*P) ]

Push protocol (client side, no lock anywhere: every rank holds one shared
``Lock_all`` epoch on each window for the whole run), on each shard the
client's range overlaps:

1. claim a slot: ``Compare_and_swap(slot.STATE: FREE -> CLAIMED)``, trying
   slots from ``(client + push) % K``; none free means the shard is behind:
   back off and retry (bounded by ``comm.timeout_seconds``);
2. ``Put`` the overlapping part of the gradient at its offset in the slot, ``Flush``;
3. write ``OWNER``, ``SEQ``, ``BASE_VERSION``, ``LO`` and ``HI`` (one atomic
   ``Accumulate``), ``Flush``;
4. mark it ``FULL`` (atomic), ``Flush``.

The shard applies FULL slots (a client's in ``SEQ`` order) on ``[LO, HI)``
of its slice only, then adds 1 to ``APPLIED[owner]``, publishes ``VERSION``
(the pushes it applied, whatever their range) and sets the slot ``FREE``
(atomic operations on its own window).  A client stopped between 1 and 4
holds one slot and no lock: the shard and every other client go on.

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
    OWNER = 1         # client (replica * P + partition) that filled it
    SEQ = 2           # that client's push number on this shard (1-based)
    BASE_VERSION = 3  # this shard's VERSION when the gradient's parameters were fetched (staleness)
    LO = 4            # the push covers [LO, HI) of the shard's slice (slice-relative)
    HI = 5


SLOT_FIELDS = 6


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
    clients: int     # R * P: one APPLIED counter each

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

    def applied(self, client: int) -> int:
        """Ctrl index of the count of ``client``'s pushes this shard consumed (applied or rejected)."""
        return HEADER + self.slots * SLOT_FIELDS + client

    @property
    def ctrl_size(self) -> int:
        return HEADER + self.slots * SLOT_FIELDS + self.clients

    @property
    def bytes(self) -> int:
        return 4 * self.data_size + 8 * self.ctrl_size


def shard_layouts(n_params: int, shards: int, n_state: int, slots: int, replicas: int,
                  partitions: int = 1) -> list[ShardLayout]:
    """Every shard's layout; the clients are the ``replicas x partitions`` replica partitions."""
    clients = replicas * partitions
    return [ShardLayout(s.start, s.stop - s.start, n_state, slots, clients) for s in shard_slices(n_params, shards)]


def client_id(replica: int, partition: int, partitions: int) -> int:
    """The client number of partition ``partition`` of replica ``replica`` (``partitions`` per replica)."""
    if not 0 <= partition < partitions:
        raise ValueError(f"partition must be in [0, {partitions}), got {partition}")
    return replica * partitions + partition


@dataclass(frozen=True)
class Overlap:
    """The part ``[lo, hi)`` of shard ``shard``'s slice that a client's range holds, and where it lies in the
    client's buffer: ``out[at: at + hi - lo]``."""

    shard: int
    lo: int  # slice-relative
    hi: int
    at: int  # offset in the client's buffer (range-relative)


def overlaps(layouts: list[ShardLayout], lo: int, hi: int) -> list[Overlap]:
    """The shards that hold some of the global range ``[lo, hi)``, in shard order (pure).

    Empty shards and empty ranges overlap nothing; the parts cover ``[lo, hi)``
    exactly once.
    """
    out = []
    for k, L in enumerate(layouts):
        a, b = max(lo, L.lo), min(hi, L.hi)
        if a < b:
            out.append(Overlap(k, a - L.lo, b - L.lo, a - lo))
    return out
