"""Collective creation of the parameter server's windows."""

from __future__ import annotations

import numpy as np

from dbnet.mpi import barrier
from dbnet.ps.layout import ShardLayout, shard_layouts
from dbnet.topology import Role, Topology


class PSWindows:
    """The data and ctrl windows of every shard (see :mod:`dbnet.ps.layout`).

    Collective over ``topo.comm``: every rank must construct it, in the same
    order relative to other collectives, and call :meth:`free`.  Shards
    allocate their memory with ``MPI.Win.Allocate`` (locks are only portable
    on MPI-allocated memory); other ranks attach zero bytes.  On a shard,
    ``data`` and ``ctrl`` are numpy views of its own window memory.
    """

    def __init__(self, topo: Topology, n_params: int, n_state: int, timeout: float = 120.0):
        from mpi4py import MPI

        self.topo = topo
        self.layouts = shard_layouts(n_params, topo.shards, n_state, topo.replicas)
        mine = self.layouts[topo.me.shard_id] if topo.role is Role.SHARD else None
        data_bytes = 4 * mine.data_size if mine else 0
        ctrl_bytes = 8 * mine.ctrl_size if mine else 0
        self.data_win = MPI.Win.Allocate(data_bytes, 4, comm=topo.comm)
        self.ctrl_win = MPI.Win.Allocate(ctrl_bytes, 8, comm=topo.comm)
        self.layout: ShardLayout | None = mine
        if mine:
            self.data = np.frombuffer(self.data_win.tomemory(), np.float32, count=mine.data_size)
            self.ctrl = np.frombuffer(self.ctrl_win.tomemory(), np.int64, count=mine.ctrl_size)
            self.ctrl[:] = 0
        # every ctrl window is zeroed before anyone reads it
        barrier(topo.comm, timeout, "every rank to allocate the parameter server's windows")

    def free(self) -> None:
        """Collective: release both windows."""
        self.data = self.ctrl = None
        self.data_win.Free()
        self.ctrl_win.Free()
