"""Collective creation of the parameter server's windows."""

from __future__ import annotations

from dbnet.ps.layout import ShardLayout, client_id, shard_layouts
from dbnet.rma import Window
from dbnet.topology import Role, Topology

import numpy as np


class PSWindows:
    """The data (float32) and ctrl (int64) windows of every shard (see :mod:`dbnet.ps.layout`).

    Collective over ``topo.comm``: every rank constructs it, in the same
    order relative to other collectives, and calls :meth:`free`.  Shards
    allocate their memory with ``MPI.Win.Allocate``; other ranks expose zero
    bytes.  Every rank holds one ``Lock_all`` epoch on both windows until
    :meth:`free` (no exclusive locks anywhere).  The caller must make sure
    every rank has created the windows (a barrier) before any rank uses them.

    The parameter server's clients are the ``topo.replicas x topo.partitions``
    replica partitions (:meth:`client_of`); the ctrl window counts per client.
    """

    def __init__(self, topo: Topology, n_params: int, n_state: int, slots: int):
        self.topo = topo
        self.n_params = n_params
        self.clients = topo.replicas * topo.partitions
        self.layouts = shard_layouts(n_params, topo.shards, n_state, slots, topo.replicas, topo.partitions)
        mine = self.layouts[topo.me.shard_id] if topo.role is Role.SHARD else None
        self.layout: ShardLayout | None = mine
        self.data = Window(topo.comm, mine.data_size if mine else 0, np.float32)
        self.ctrl = Window(topo.comm, mine.ctrl_size if mine else 0, np.int64)

    def client_of(self, replica: int, partition: int = 0) -> int:
        """The client number of a replica's partition (``replica * P + partition``)."""
        return client_id(replica, partition, self.topo.partitions)

    def free(self) -> None:
        """Collective: release both windows."""
        self.data.free()
        self.ctrl.free()
