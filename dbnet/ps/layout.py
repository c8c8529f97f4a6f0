"""Memory layout of a parameter-server shard (pure: every rank computes it alike).

Shard k owns the slice ``shard_slices(n_params, S)[k]`` of the flat parameter
vector, of length n.  It exposes two windows made by ``MPI.Win.Allocate``:

* **data** (float32, displacement unit 4 bytes)::

      [ params (n) | state_0 (n) ... state_{m-1} (n) | inbox (R x INBOX_DEPTH slots of n) ]

  ``state_i`` are the update rule's arrays (e.g. Adagrad's sums of squares);
  replica r's push number s (counting from 1) goes into its inbox slot
  ``(s - 1) % INBOX_DEPTH``: with two slots a replica can put its next
  gradient while the shard still applies the previous one.

* **ctrl** (int64, displacement unit 8 bytes): a header of :class:`Ctrl`
  fields, then one block of :class:`Slot` fields per replica.

The push protocol keeps at most INBOX_DEPTH outstanding pushes per replica
per shard: replica r writes the slot, then (after a flush) its
``BASE_VERSION`` entry and ``PUSH_SEQ``; the shard applies pushes in order
and advances ``APPLIED_SEQ``; replica r waits until ``PUSH_SEQ - APPLIED_SEQ
< INBOX_DEPTH`` before it writes a slot again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dbnet.partition import shard_slices


class Ctrl(enum.IntEnum):
    """Header fields of every shard's ctrl window."""

    STOP = 0        # set to 1 by the lead: finish and shut down
    VERSION = 1     # number of pushes this shard has applied (its parameter version)
    REJECTED = 2    # pushes rejected because they held NaN or Inf
    STARTED = 3     # shard 0: 1 once warmstart is over and every replica may train
    EXAMPLES = 4    # shard 0: training examples pushed, summed over replicas
    HEARTBEAT = 5   # shard 0: bumped by the lead about once a second (liveness for waiting ranks)


class Slot(enum.IntEnum):
    """Per-replica fields, at ``HEADER + r * SLOT_SIZE`` in every shard's ctrl window."""

    PUSH_SEQ = 0      # replica: pushes sent to this shard
    APPLIED_SEQ = 1   # shard: pushes of this replica consumed (applied or rejected)
    STATE = 2         # shard 0: replica state (ReplicaState)
    EPOCH = 3         # shard 0: the replica's data position, for checkpoints ...
    BATCH = 4
    STEP = 5
    EXAMPLES = 6
    BASE_VERSION = 7  # replica, one per inbox slot: this shard's VERSION when the pushed gradient's
    #                   parameters were fetched (for the staleness count)


INBOX_DEPTH = 2


class ReplicaState(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    DONE = 2
    FAILED = 3


HEADER = 8
SLOT_SIZE = Slot.BASE_VERSION + INBOX_DEPTH


def slot(replica: int, field: Slot) -> int:
    """Index of ``field`` of ``replica`` in a ctrl window."""
    return HEADER + replica * SLOT_SIZE + int(field)


@dataclass(frozen=True)
class ShardLayout:
    """Offsets (in float32 elements) of the data window of shard ``k``."""

    lo: int          # first parameter index owned
    n: int           # parameters owned
    n_state: int     # update-rule state arrays
    replicas: int

    @property
    def data_size(self) -> int:
        return self.n * (1 + self.n_state + self.replicas * INBOX_DEPTH)

    def state_offset(self, i: int) -> int:
        return self.n * (1 + i)

    def inbox_offset(self, replica: int, push: int) -> int:
        """Offset of the slot that holds ``replica``'s push number ``push`` (1-based)."""
        return self.n * (1 + self.n_state + replica * INBOX_DEPTH + (push - 1) % INBOX_DEPTH)

    @property
    def ctrl_size(self) -> int:
        return HEADER + SLOT_SIZE * self.replicas

    @property
    def hi(self) -> int:
        return self.lo + self.n


def shard_layouts(n_params: int, shards: int, n_state: int, replicas: int) -> list[ShardLayout]:
    return [ShardLayout(s.start, s.stop - s.start, n_state, replicas) for s in shard_slices(n_params, shards)]
