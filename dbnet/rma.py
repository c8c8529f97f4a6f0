"""One-sided communication without locks: the layer under the parameter server and the control plane.

:class:`Window` wraps an ``MPI.Win.Allocate`` window in one passive-target
epoch that every rank opens at creation (``Lock_all``, shared) and closes
at :meth:`Window.free`.  No rank ever takes an exclusive lock, so no rank
can wait behind another rank's lock; completion is per operation
(``Flush``).  Within the epoch:

* **atomic int64 fields**: :meth:`read`, :meth:`write`, :meth:`add` and
  :meth:`cas` use ``Fetch_and_op``/``Compare_and_swap``, which the MPI
  standard makes atomic per element, also when the target is this rank;
* **bulk float32 data**: :meth:`get` and :meth:`put` (each float is written
  whole; a concurrent reader may see a mix of old and new floats);
* **the owner's own memory**: ``local`` is a numpy view; after local stores
  the owner calls :meth:`sync` (``Win_sync``) so that others see them, and
  before local loads of what others wrote.

Collective obligations: construction and :meth:`free` are collective over
the communicator, in the same order on every rank.  A rank that failed must
not call :meth:`free` (it would wait for ranks that will never come): it
aborts instead (see :mod:`dbnet.mpi`).
"""

from __future__ import annotations

import numpy as np


class Window:
    """An RMA window of ``count`` elements of ``dtype`` on this rank (0 elsewhere is fine).

    Collective over ``comm``.
    """

    def __init__(self, comm, count: int, dtype):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.dtype = np.dtype(dtype)
        self.mpi_type = {np.dtype(np.int64): MPI.INT64_T, np.dtype(np.float32): MPI.FLOAT}[self.dtype]
        size = self.dtype.itemsize
        self.win = MPI.Win.Allocate(count * size, size, comm=comm)
        self.local = np.frombuffer(self.win.tomemory(), self.dtype, count=count) if count else None
        if count:
            self.local[:] = 0
        self.win.Lock_all()
        self.win.Sync()  # the zeros are in the public copy before anyone reads it
        self._one = np.zeros(1, np.int64)
        self._cmp = np.zeros(1, np.int64)
        self._res = np.zeros(1, np.int64)
        self._nothing = np.zeros(0, np.int64)  # the (ignored) origin of NO_OP reads

    # -- atomic int64 fields ---------------------------------------------------
    def _fop(self, rank: int, index: int, value: int, op) -> int:
        MPI = self.MPI
        self._one[0] = value
        self.win.Fetch_and_op([self._one, MPI.INT64_T], [self._res, MPI.INT64_T], rank, index, op=op)
        self.win.Flush(rank)
        return int(self._res[0])

    def read(self, rank: int, index: int) -> int:
        """Field ``index`` of ``rank``'s window (atomic)."""
        return self._fop(rank, index, 0, self.MPI.NO_OP)

    def write(self, rank: int, index: int, value: int) -> int:
        """Atomically replace a field; returns the old value."""
        return self._fop(rank, index, value, self.MPI.REPLACE)

    def add(self, rank: int, index: int, value: int) -> int:
        """Atomically add ``value``; returns the new value."""
        return self._fop(rank, index, value, self.MPI.SUM) + value

    def cas(self, rank: int, index: int, expect: int, new: int) -> bool:
        """Compare-and-swap: set the field to ``new`` if it equals ``expect``; True if it did."""
        MPI = self.MPI
        self._one[0], self._cmp[0] = new, expect
        self.win.Compare_and_swap([self._one, MPI.INT64_T], [self._cmp, MPI.INT64_T], [self._res, MPI.INT64_T],
                                  rank, index)
        self.win.Flush(rank)
        return int(self._res[0]) == expect

    def write_many(self, rank: int, index: int, values: np.ndarray) -> None:
        """Atomically (per element) replace ``len(values)`` consecutive int64 fields; ``values`` must stay alive."""
        MPI = self.MPI
        self.win.Accumulate([values, MPI.INT64_T], rank, target=(index, len(values), MPI.INT64_T), op=MPI.REPLACE)
        self.win.Flush(rank)

    def read_many(self, rank: int, index: int, out: np.ndarray) -> np.ndarray:
        """Atomically (per element) read ``len(out)`` consecutive int64 fields into ``out``."""
        MPI = self.MPI
        self.win.Get_accumulate([self._nothing, 0, MPI.INT64_T], [out, MPI.INT64_T], rank,
                                target=(index, len(out), MPI.INT64_T), op=MPI.NO_OP)
        self.win.Flush(rank)
        return out

    # -- bulk data -------------------------------------------------------------
    def get(self, rank: int, offset: int, out: np.ndarray) -> None:
        """Copy ``len(out)`` elements from ``rank``'s window at ``offset`` into ``out`` (complete on return)."""
        self.win.Get([out, self.mpi_type], rank, target=(offset, out.size, self.mpi_type))
        self.win.Flush(rank)

    def put(self, rank: int, offset: int, data: np.ndarray) -> None:
        """Copy ``data`` into ``rank``'s window at ``offset`` (complete at the target on return)."""
        self.win.Put([data, self.mpi_type], rank, target=(offset, data.size, self.mpi_type))
        self.win.Flush(rank)

    # -- the owner's side ------------------------------------------------------
    def sync(self) -> None:
        """Synchronize this rank's local view with the window's public copy (``Win_sync``)."""
        self.win.Sync()

    def free(self) -> None:
        """Collective: end the epoch and release the window."""
        self.local = None
        self.win.Unlock_all()
        self.win.Free()
