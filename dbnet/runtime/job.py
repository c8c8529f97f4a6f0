"""What every rank of a distributed run holds, and the duties shared by every algorithm.

A :class:`Job` is made by :mod:`dbnet.runtime.startup` on every rank and
handed to the algorithm's ``run(job)``.  It owns:

* the resolved config, the :class:`~dbnet.topology.Topology`, the control
  plane (:class:`~dbnet.runtime.control.Control`), the dataset path, the
  network spec and update rule, what to resume from (:class:`Resume`), and,
  on the lead, the run directory and progress output;
* the **waits** every algorithm needs, each bounded: barriers with a deadline
  (:meth:`Job.barrier`), waiting for the warmstart to end or for the stop
  flag while watching the lead's heartbeat (:meth:`Job.wait_until`);
* the **shutdown**, written once (:meth:`Job.finish`);
* injected faults (:meth:`Job.maybe_crash`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from dbnet.config import Config
from dbnet.mpi import barrier
from dbnet.runtime.control import Control, Field, RankState, lead_liveness
from dbnet.topology import Topology


class InjectedCrash(RuntimeError):
    """``faults.crash_rank``: an unhandled error, which must end the whole job."""


@dataclass
class Resume:
    """What a resumed run starts from (empty for a new run).  The same on every rank.

    ``replica_steps[r]``: replica r's own step count (its data position) for
    this run's replica count; ``shard_versions`` only when the shard count is
    unchanged (else versions restart at 0).
    """

    path: str | None = None
    examples: int = 0
    steps: int = 0
    wall_seconds: float = 0.0
    warmstart_done: bool = False
    replica_steps: list[int] = field(default_factory=list)
    shard_versions: list[int] = field(default_factory=list)
    note: str = ""

    def params_slice(self, lo: int, hi: int, state_names, spec=None, partitions: int = 1
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Parameters and optimizer state ``[lo, hi)`` of the partition-major vector for ``partitions``
        model partitions (read by each shard; checkpoints hold the canonical order, P = 1)."""
        from dbnet.checkpoint import read_slice

        if partitions == 1:
            return read_slice(self.path, lo, hi, state_names)
        from dbnet.mp.plan import from_canonical

        params, state = read_slice(self.path, 0, spec.n_params, state_names)
        return (from_canonical(spec, partitions, params)[lo:hi],
                {k: from_canonical(spec, partitions, v)[lo:hi] for k, v in state.items()})


@dataclass
class Job:
    cfg: Config
    topo: Topology
    control: Control
    data_path: str
    spec: Any
    rule: Any
    resume: Resume
    rd: Any = None        # the run directory (lead only)
    checkpoint: Any = None  # the loaded resume Checkpoint (lead only: metrics)
    progress: Any = None
    t_start: float = field(default_factory=time.monotonic)

    @property
    def timeout(self) -> float:
        return self.cfg.comm.timeout_seconds

    def barrier(self, what: str, idle: Callable[[], bool] | None = None, factor: float = 1.0) -> None:
        """Every rank of the job (collective over ``topo.comm``), within ``factor x comm.timeout_seconds``."""
        barrier(self.topo.comm, factor * self.timeout, what, idle=idle)

    def maybe_crash(self, step: int) -> None:
        f = self.cfg.faults
        if f.crash_rank == self.topo.rank and step >= f.crash_at_step:
            raise InjectedCrash(f"injected crash on rank {self.topo.rank} at step {step} (faults.crash_rank)")

    def wait_until(self, ready: Callable[[], bool], doing: str, idle: Callable[[], bool] | None = None,
                   call: Callable = lambda fn, *a: fn(*a), poll: float = 0.005, max_sleep: float = 2e-3) -> None:
        """Poll ``ready()`` (at most every ``poll`` s) until true, running ``idle()`` in between
        (sleeping with back-off while it finds nothing to do), as long as the lead's heartbeat goes on.

        ``call`` runs MPI work (on the communication thread when the rank has one).
        """
        alive = lead_liveness(self.control, self.timeout)
        sleep, last = 20e-6, 0.0
        while True:
            now = time.monotonic()
            if idle is None or now - last >= poll:
                if call(ready):
                    return
                last = now
            busy = idle is not None and call(idle)
            call(self._keep_alive, alive, doing)
            if busy:
                sleep = 20e-6
            else:
                time.sleep(sleep)
                sleep = min(2 * sleep, max_sleep)

    def _keep_alive(self, alive, doing: str) -> None:
        if not self.topo.is_lead:
            alive.check(doing)
        self.control.beat()

    def started_or_stopped(self) -> bool:
        return bool(self.control.read(Field.STARTED) or self.control.read(Field.STOP))

    def finish(self, stats: Callable[[], dict], idle: Callable[[], bool] | None = None,
               final: Callable[[], Any] | None = None) -> tuple[list[dict] | None, Any]:
        """The shutdown, the same for every algorithm (collective over ``topo.comm``).

        1. every rank has finished its own work (replicas: last push sent);
           ranks with ``idle`` (shards) keep serving meanwhile, then drain;
        2. the lead runs ``final()`` (last evaluation and checkpoint) while the
           ``idle`` ranks serve it;
        3. the statistics (``stats()``, taken now) are gathered on the lead.

        Returns ``(all ranks' stats, final()'s result)`` on the lead, ``(None, None)`` elsewhere.
        The caller then frees its windows; the runtime frees the control plane.
        """
        failed = stats().get("state") == "failed"
        self.control.set_state(RankState.FAILED if failed else RankState.DONE)
        self.barrier("every rank to finish its work (shutdown 1/3)", idle=idle)
        if idle is not None:
            while idle():
                pass
        self.barrier("the parameter server to drain (shutdown 2/3)")
        result = final() if (final is not None and self.topo.is_lead) else None
        self.barrier("the lead's final evaluation and checkpoint (shutdown 3/3)", idle=idle, factor=10)
        all_stats = self.topo.comm.gather(stats(), root=self.topo.lead_rank)
        return all_stats, result
