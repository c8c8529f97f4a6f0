"""A communication thread: MPI calls run on one thread while the caller computes.

Numba kernels and the BLAS release the GIL, so a rank can compute on its
training thread while :class:`CommThread` moves data.  While it exists, only
that thread calls MPI (which needs only ``MPI_THREAD_SERIALIZED``); other
code of the rank sends its MPI work through :meth:`CommThread.call`.  Every
wait for a transfer has a deadline.  :class:`Direct` has the same interface
and runs calls in the caller's thread.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from dbnet.mpi import Deadline, WaitTimeout


class Direct:
    """Runs every call in the calling thread."""

    def __init__(self):
        self.exposed_seconds = 0.0

    def call(self, fn, *args, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            self.exposed_seconds += time.perf_counter() - t0

    def close(self) -> None:
        pass


class CommThread:
    """One thread that does every MPI call of this rank; ``timeout`` bounds every wait for it."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="dbnet-comm")
        self.exposed_seconds = 0.0  # time the caller spent waiting for this thread
        self._pending: list[Future] = []

    def submit(self, fn, *args, **kw) -> Future:
        f = self.pool.submit(fn, *args, **kw)
        self._pending = [p for p in self._pending if not p.done()] + [f]
        return f

    def wait(self, f: Future):
        t0 = time.perf_counter()
        deadline = Deadline(self.timeout)  # time this process spends stopped does not count
        try:
            while True:
                try:
                    return f.result(timeout=0.25)
                except FutureTimeout:
                    if deadline.expired():
                        raise WaitTimeout(f"communication thread: no transfer finished within {self.timeout:g} s") \
                            from None
        finally:
            self.exposed_seconds += time.perf_counter() - t0

    def call(self, fn, *args, **kw):
        """Run ``fn`` on the communication thread and wait for it."""
        return self.wait(self.submit(fn, *args, **kw))

    def close(self) -> None:
        """Wait for everything in flight (even after a failure), stop the thread, re-raise the first error.

        Afterwards the caller may use MPI again.
        """
        error = None
        for f in self._pending:
            try:
                self.wait(f)
            except BaseException as e:  # noqa: BLE001 - collected, re-raised below
                error = error or e
        self._pending = []
        self.pool.shutdown(wait=error is None, cancel_futures=True)  # a stuck transfer: the job aborts
        if error is not None:
            raise error
