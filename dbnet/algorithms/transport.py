"""How a Downpour replica moves parameters and gradients: in its training thread, or overlapped.

:class:`SyncTransport` fetches and pushes in the training thread.  With
``read_own_writes`` a fetch includes the replica's own previous push, which
makes a lone replica exactly SGD.

:class:`OverlapTransport` gives every MPI call of the replica to one
communication thread, so that fetches and pushes run while the training
thread computes (Numba and BLAS release the GIL): at the start of step t the
parameters for the next fetch step are already being fetched into a second
buffer, and the gradient of step t is pushed from a second gradient buffer
while step t+1 computes.  The parameters a step trains on therefore lack the
replica's own latest push or two, as with DistBelief's loosely coupled
fetch/compute/push threads.  Only the communication thread calls MPI while
training runs (the lead's reads go through it too), which needs only
``MPI_THREAD_SERIALIZED``.

Both keep, for the parameters in use, the shard versions they were fetched
at (pushed with the gradient, for the shards' staleness count), the job's
total of examples as of the last push, and ``exposed_seconds``: the time the
training thread spent waiting for communication, which overlap hides.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np

from dbnet.mpi import WaitTimeout
from dbnet.ps import PSClient


class SyncTransport:
    def __init__(self, client: PSClient, n_fetch: int, read_own_writes: bool):
        self.client = client
        self.lead_client = client
        self.n_fetch = n_fetch
        self.own = read_own_writes
        self.exposed_seconds = 0.0
        self.fetched_at = -1
        self.base: list[int] = []
        self.examples_total = 0

    def params_for(self, step: int, w: np.ndarray) -> np.ndarray:
        """The parameter buffer to train step ``step`` on (fetched when ``step % n_fetch == 0``)."""
        if self.fetched_at < 0 or (step % self.n_fetch == 0 and step != self.fetched_at):
            t0 = time.perf_counter()
            self.base = self.client.fetch(w, own_writes=self.own)
            self.exposed_seconds += time.perf_counter() - t0
            self.fetched_at = step
        return w

    def push(self, g: np.ndarray, examples: int, position: tuple[int, int, int, int]) -> np.ndarray:
        """Push ``g``; returns the buffer to write the next gradient into."""
        t0 = time.perf_counter()
        self.examples_total = self.client.push(g, examples, self.base)
        self.client.report_position(*position)
        self.exposed_seconds += time.perf_counter() - t0
        return g

    def stop_requested(self) -> bool:
        return self.client.stop_requested()

    def finish(self) -> None:
        pass


class OverlapTransport:
    def __init__(self, client: PSClient, n_fetch: int, n_params: int, timeout: float):
        self.client = client
        self.n_fetch = n_fetch
        # A job may wait up to `timeout` on each shard; the training thread waits longer than that,
        # so a slow shard surfaces as the job's own WaitTimeout, naming the shard.
        self.timeout = timeout * (client.topo.shards + 2)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="dbnet-comm")
        self.lead_client = _OnThread(client, self)
        self.spare_w = np.empty(n_params, np.float32)
        self.spare_g = np.empty(n_params, np.float32)
        self.prefetch: Future | None = None
        self.pushing: Future | None = None
        self.checking: Future | None = None
        self._last_check = 0.0
        self.stop = False
        self.exposed_seconds = 0.0
        self.fetched_at = -1
        self.base: list[int] = []
        self.examples_total = 0

    def call(self, fn, *args, **kw):
        """Run ``fn`` on the communication thread and wait for it."""
        return self._wait(self.pool.submit(fn, *args, **kw))

    def _wait(self, f: Future):
        t0 = time.perf_counter()
        try:
            return f.result(timeout=self.timeout)
        except FutureTimeout:
            raise WaitTimeout(f"communication thread: no transfer finished within {self.timeout:g} s") from None
        finally:
            self.exposed_seconds += time.perf_counter() - t0

    def _fetch_job(self, into: np.ndarray):
        versions = self.client.fetch(into, own_writes=False)
        self.stop = self.stop or self.client.stop_requested()
        return into, versions

    def _push_job(self, g: np.ndarray, examples: int, base: list[int], position) -> None:
        self.examples_total = self.client.push(g, examples, base)
        self.client.report_position(*position)
        self.stop = self.stop or self.client.stop_requested()

    def params_for(self, step: int, w: np.ndarray) -> np.ndarray:
        if self.fetched_at < 0:
            w, self.base = self.call(self._fetch_job, w)
            self.fetched_at = step
        elif step % self.n_fetch == 0 and step != self.fetched_at:
            if self.prefetch is None:  # not started one step early (e.g. after a resume): fetch now
                self.prefetch = self.pool.submit(self._fetch_job, self.spare_w)
            fresh, self.base = self._wait(self.prefetch)
            self.prefetch = None
            self.spare_w, w = w, fresh
            self.fetched_at = step
        if self.prefetch is None and (step + 1) % self.n_fetch == 0:
            self.prefetch = self.pool.submit(self._fetch_job, self.spare_w)  # overlaps this step's compute
        return w

    def push(self, g: np.ndarray, examples: int, position) -> np.ndarray:
        if self.pushing is not None:
            self._wait(self.pushing)  # the previous push's buffer becomes free
        self.pushing = self.pool.submit(self._push_job, g, examples, list(self.base), position)
        self.spare_g, g = g, self.spare_g
        return g

    def _check_job(self) -> None:
        self.stop = self.stop or self.client.stop_requested()

    def stop_requested(self) -> bool:
        """The stop flag as last read by the communication thread (read after every transfer,
        and at least every 50 ms while no transfer is in flight); never blocks."""
        idle = all(f is None or f.done() for f in (self.pushing, self.prefetch, self.checking))
        if idle and not self.stop and time.monotonic() - self._last_check > 0.05:
            self.checking = self.pool.submit(self._check_job)
            self._last_check = time.monotonic()
        return self.stop

    def finish(self) -> None:
        """Wait for every transfer in flight, stop the thread; afterwards the caller may use MPI again.

        Waits for all of them even if one failed (no thread may still use MPI), then re-raises the first error.
        """
        error = None
        try:
            for f in (self.pushing, self.prefetch, self.checking):
                if f is None:
                    continue
                try:
                    self._wait(f)
                except BaseException as e:  # noqa: BLE001 - collected, re-raised below
                    error = error or e
        finally:
            self.pushing = self.prefetch = self.checking = None
            self.pool.shutdown(wait=error is None, cancel_futures=True)  # a stuck transfer: the job aborts
        if error is not None:
            raise error


class _OnThread:
    """A PSClient whose calls run on the transport's communication thread (for the lead)."""

    def __init__(self, client: PSClient, transport: OverlapTransport):
        self._client, self._t = client, transport

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return lambda *a, **kw: self._t.call(attr, *a, **kw)
