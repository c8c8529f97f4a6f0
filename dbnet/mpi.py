"""MPI start-up, error handling and bounded waits.  Imported only by distributed code.

* :func:`init` sets MPI defaults that matter (see below), then imports mpi4py.
* :func:`fail` ends the whole job after an error on one rank, with the
  message headed by the rank, its role and host (MPI_Abort), so a failure is
  never a silent stall.
* :func:`wait_for` is the one polling loop: a predicate checked with
  exponential back-off, a deadline, and a clear error naming what timed out.

Settings applied before ``MPI_Init`` unless the user set them:

* ``OMPI_MCA_osc=^ucx`` when the machine has no InfiniBand/RoCE device: Open
  MPI's UCX one-sided component otherwise prints "OSC UCX component priority
  set inside component query failed" on every rank, and is not needed for
  shared memory or TCP.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import traceback
from typing import Callable

from dbnet.errors import DbnetError

LAUNCH_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


def launched_by_mpi() -> bool:
    """True when this process was started by mpiexec/srun (checked without initializing MPI)."""
    if any(v in os.environ for v in LAUNCH_ENV):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in os.environ


def env_rank() -> int:
    """This process's rank as the launcher tells it (0 when not launched by MPI)."""
    for v in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if v in os.environ:
            return int(os.environ[v])
    return 0


def init():
    """Apply dbnet's MPI defaults and return the initialized ``mpi4py.MPI`` module."""
    if "OMPI_MCA_osc" not in os.environ and not os.path.exists("/dev/infiniband"):
        os.environ["OMPI_MCA_osc"] = "^ucx"
    import mpi4py

    mpi4py.rc.thread_level = "multiple"
    from mpi4py import MPI

    return MPI


def who(comm, role: str = "") -> str:
    return f"rank {comm.Get_rank()}{' (' + role + ')' if role else ''} on {socket.gethostname()}"


def fail(comm, role: str, exc: BaseException, code: int = 1) -> None:
    """Print ``exc`` headed by this rank's identity and abort the whole MPI job."""
    if isinstance(exc, DbnetError):
        msg = f"dbnet: error on {who(comm, role)}: {exc}\n"
    else:
        msg = f"dbnet: unhandled error on {who(comm, role)}:\n" + "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)
        )
    sys.stderr.write(msg)
    sys.stderr.flush()
    comm.Abort(code)


class WaitTimeout(DbnetError):
    """A bounded wait ran out: names what was awaited and for how long."""


def barrier(comm, timeout: float, what: str, idle: Callable[[], bool] | None = None) -> None:
    """A barrier over ``comm`` that gives up after ``timeout`` seconds (:class:`WaitTimeout`).

    ``idle()`` runs while waiting (a shard keeps serving pushes); collective over ``comm``.
    """
    req = comm.Ibarrier()
    wait_for(req.Test, timeout, what, idle=idle)


#: Incremented by the SIGCONT handler (:func:`count_continues`): this process was stopped and continued.
continued = 0


def count_continues() -> None:
    """Install a SIGCONT handler that counts continues (main thread; the runtime does it at start-up)."""
    import signal

    def handler(signum, frame):
        global continued
        continued += 1

    signal.signal(signal.SIGCONT, handler)


class Deadline:
    """``timeout`` seconds of wall time, less the time this process spent stopped.

    A rank stopped while it waited (SIGSTOP, a debugger, a suspended node)
    would otherwise, once continued, blame the rank it waited for.  An
    interval between two checks during which a SIGCONT arrived counts at
    most ``max_gap`` seconds (see :func:`count_continues`); every other
    interval counts in full.
    """

    def __init__(self, timeout: float, max_gap: float = 1.0):
        self.timeout, self.max_gap = timeout, max_gap
        self.elapsed = 0.0
        self._last = time.monotonic()
        self._seen = continued

    def expired(self) -> bool:
        now = time.monotonic()
        gap = now - self._last
        if gap > self.max_gap and continued == self._seen and threading.current_thread() is not threading.main_thread():
            time.sleep(0.3)  # Python runs signal handlers in the main thread: give it time to count a SIGCONT
        if continued != self._seen:
            self._seen = continued
            gap = min(gap, self.max_gap)
        self.elapsed += gap
        self._last = now
        return self.elapsed > self.timeout


def wait_for(ready: Callable[[], bool], timeout: float, what: str, *, idle: Callable[[], None] | None = None,
             min_sleep: float = 20e-6, max_sleep: float = 1e-3) -> float:
    """Poll ``ready()`` until it is true; return the seconds waited.

    Sleeps between polls grow from ``min_sleep`` to ``max_sleep``;
    ``idle()`` (e.g. serving requests) runs between polls instead of sleeping
    when given and resets the back-off when it returns true.  Raises
    :class:`WaitTimeout` after ``timeout`` seconds of this process's running
    time (see :class:`Deadline`).
    """
    t0 = time.monotonic()
    deadline = Deadline(timeout)
    sleep = min_sleep
    while not ready():
        if deadline.expired():
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}")
        if idle is not None and idle():
            sleep = min_sleep
            continue
        time.sleep(sleep)
        sleep = min(2 * sleep, max_sleep)
    return time.monotonic() - t0
