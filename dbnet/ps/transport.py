"""How a replica (partition) moves parameters and gradients: in its training thread, or overlapped.

A transport serves one :class:`~dbnet.ps.client.PSClient`: its buffers are
the client's range, ``client.n = hi - lo`` floats (the whole vector for a
replica with one partition), and the versions it keeps are the client's
(one per shard in ``client.shards``).

Both transports share one interface, used by Downpour (and later EASGD async):

* ``params_for(step, w) -> w``: the buffer to train step ``step`` on,
  fetched when ``step % n_fetch == 0``;
* ``push(g, examples, step) -> g``: push ``g`` and report the examples and
  the replica's step to the control plane; returns the buffer to write the
  next gradient into;
* ``stop_requested()``, ``examples_total`` (the job's total as of the last
  push), ``comm`` (a :class:`~dbnet.comm.Direct` or
  :class:`~dbnet.comm.CommThread`: every other MPI call of the rank goes
  through ``comm.call``), ``finish()``.

:class:`SyncTransport` fetches and pushes in the training thread; with
``read_own_writes`` a fetch includes the replica's own previous push, which
makes a lone replica exactly SGD.

:class:`OverlapTransport` does them on the communication thread: at the start
of step t the parameters for the next fetch step are already being fetched
into a second buffer, and the gradient of step t is pushed from a second
gradient buffer while step t+1 computes, as with DistBelief's loosely
coupled fetch/compute/push threads.  The parameters a step trains on then
lack the replica's own latest push or two.
"""

from __future__ import annotations

import time
from concurrent.futures import Future

import numpy as np

from dbnet.comm import CommThread, Direct
from dbnet.ps.client import PSClient


class _Transport:
    """What both transports keep: the client, the control-plane hooks, and the fetch state."""

    def __init__(self, client: PSClient, report, stopped, n_fetch: int, comm):
        self.client, self.report, self.stopped = client, report, stopped
        self.comm = comm
        self.n_fetch = n_fetch
        self.fetched_at = -1          # the step of the last fetch
        self.base: list[int] = []     # the versions (of client.shards) the parameters in use were fetched at
        self.examples_total = 0       # the job's examples as of the last push

    @property
    def exposed_seconds(self) -> float:
        """Time the training thread spent waiting for communication."""
        return self.comm.exposed_seconds


class SyncTransport(_Transport):
    def __init__(self, client: PSClient, report, stopped, n_fetch: int, read_own_writes: bool):
        super().__init__(client, report, stopped, n_fetch, Direct())
        self.own = read_own_writes

    def params_for(self, step: int, w: np.ndarray) -> np.ndarray:
        if self.fetched_at < 0 or (step % self.n_fetch == 0 and step != self.fetched_at):
            self.base = self.comm.call(self.client.fetch, w, own_writes=self.own)
            self.fetched_at = step
        return w

    def push(self, g: np.ndarray, examples: int, step: int) -> np.ndarray:
        def job():
            self.client.push(g, self.base)
            self.examples_total = self.report(examples, step)

        self.comm.call(job)
        return g

    def stop_requested(self) -> bool:
        return self.comm.call(self.stopped)

    def finish(self) -> None:
        pass


class OverlapTransport(_Transport):
    def __init__(self, client: PSClient, report, stopped, n_fetch: int, n_params: int, timeout: float):
        """``n_params``: the length of the client's range (``client.n``; all parameters for a whole replica)."""
        if n_params != client.n:
            raise ValueError(f"n_params must be the client's range length {client.n} "
                             f"([{client.lo}, {client.hi})), got {n_params}")
        # A transfer may wait up to `timeout` on each shard; the training thread waits longer than that,
        # so a slow shard surfaces as the transfer's own WaitTimeout, naming the shard.
        super().__init__(client, report, stopped, n_fetch, CommThread(timeout * (client.topo.shards + 2)))
        self.spare_w = np.empty(n_params, np.float32)
        self.spare_g = np.empty(n_params, np.float32)
        self.prefetch: Future | None = None
        self.pushing: Future | None = None
        self.checking: Future | None = None
        self._last_check = 0.0
        self.stop = False

    def _fetch_job(self, into: np.ndarray):
        versions = self.client.fetch(into, own_writes=False)
        self.stop = self.stop or self.stopped()
        return into, versions

    def _push_job(self, g: np.ndarray, examples: int, base: list[int], step: int) -> None:
        self.client.push(g, base)
        self.examples_total = self.report(examples, step)
        self.stop = self.stop or self.stopped()

    def params_for(self, step: int, w: np.ndarray) -> np.ndarray:
        if self.fetched_at < 0:
            w, self.base = self.comm.call(self._fetch_job, w)
            self.fetched_at = step
        elif step % self.n_fetch == 0 and step != self.fetched_at:
            if self.prefetch is None:  # not started one step early (e.g. after a resume): fetch now
                self.prefetch = self.comm.submit(self._fetch_job, self.spare_w)
            fresh, self.base = self.comm.wait(self.prefetch)
            self.prefetch = None
            self.spare_w, w = w, fresh
            self.fetched_at = step
        if self.prefetch is None and (step + 1) % self.n_fetch == 0:
            self.prefetch = self.comm.submit(self._fetch_job, self.spare_w)  # overlaps this step's compute
        return w

    def push(self, g: np.ndarray, examples: int, step: int) -> np.ndarray:
        if self.pushing is not None:
            self.comm.wait(self.pushing)  # the previous push's buffer becomes free
        self.pushing = self.comm.submit(self._push_job, g, examples, list(self.base), step)
        self.spare_g, g = g, self.spare_g
        return g

    def _check_job(self) -> None:
        self.stop = self.stop or self.stopped()

    def stop_requested(self) -> bool:
        """The stop flag as last read by the communication thread (after every transfer, and at least
        every 50 ms while none is in flight); never blocks."""
        idle = all(f is None or f.done() for f in (self.pushing, self.prefetch, self.checking))
        if idle and not self.stop and time.monotonic() - self._last_check > 0.05:
            self.checking = self.comm.submit(self._check_job)
            self._last_check = time.monotonic()
        return self.stop

    def finish(self) -> None:
        """Wait for every transfer in flight and stop the thread; afterwards the caller may use MPI again."""
        self.pushing = self.prefetch = self.checking = None
        self.comm.close()
        exposed, self.comm = self.comm.exposed_seconds, Direct()
        self.comm.exposed_seconds = exposed
