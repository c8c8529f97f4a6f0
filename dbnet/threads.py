"""Threads per process: Numba's and the BLAS's, set together.

Several MPI ranks on one node must share its cores: with every rank running
a full set of BLAS and Numba threads, the threads of 2 ranks on 2 cores
fight and spin (measured on the 2-core machine: Downpour with 1 replica and
1 shard ran at 1,800 examples/s with default threads and 17,900 with one
thread per rank).  :func:`per_rank` gives each rank its share of the node's
cores; ``run.threads`` in the config overrides it.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_threads(n: int) -> None:
    """Use ``n`` threads in Numba's parallel kernels and in the BLAS."""
    import numba

    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        pass


def per_rank(comm, requested: int = 0) -> int:
    """Threads for this rank: ``requested`` if > 0, else the node's cores divided by its ranks.

    Collective over ``comm`` (splits it by shared-memory node).
    """
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local = node.Get_size()
    node.Free()
    if requested > 0:
        return requested
    return max(1, min(available_cores(), (os.cpu_count() or 1) // local))
