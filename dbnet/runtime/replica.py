"""A replica's training phase, the same for every data-parallel algorithm.

:class:`TrainingPhase` wraps an algorithm's step loop::

    with TrainingPhase(job, transport, lead) as phase:
        ...  # the schedule: fetch, compute, push
    # here: transfers finished, state published, the job stopped

On entry it waits for the warmstart to end (every replica but the lead's),
watching the lead's heartbeat, and marks the rank RUNNING.  On exit it
applies the failure policy: an exception of the replica's own step marks the
replica FAILED and the job goes on without it (DistBelief: nothing waits for
a lost replica); a lost shard, a broken MPI, a failed lead or an injected
crash is the whole job's failure and propagates (the runtime aborts).  Then
it finishes the transport's transfers, publishes the rank's state, and
either keeps leading until the job stops (the lead) or waits for the stop.
"""

from __future__ import annotations

import traceback

from dbnet.errors import PartnerLost, TrainingDiverged
from dbnet.mpi import WaitTimeout
from dbnet.runtime.control import RankState
from dbnet.runtime.job import InjectedCrash
from dbnet.runtime.lead import LeadError


class InjectedFault(RuntimeError):
    """``faults.fail_replica``: a replica's step fails (the job goes on without it)."""


class TrainingPhase:
    def __init__(self, job, transport, lead=None):
        self.job, self.transport, self.lead = job, transport, lead
        self.state, self.error = RankState.DONE, None

    def call(self, fn, *args):
        """Run MPI work on the transport's communication thread (or directly)."""
        return self.transport.comm.call(fn, *args)

    def __enter__(self) -> TrainingPhase:
        job = self.job
        topo = job.topo
        if topo.me.replica_id != topo.roles[topo.lead_rank].replica_id:  # the lead's replica (all its partitions)
            job.wait_until(job.started_or_stopped, "waiting for the warmstart to end", call=self.call)
        self.call(job.control.set_state, RankState.RUNNING)
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        from mpi4py import MPI

        if exc is not None:
            if not isinstance(exc, Exception) or isinstance(exc, (WaitTimeout, MPI.Exception, LeadError,
                                                                   InjectedCrash)):
                return False  # the job's failure: the runtime aborts every rank
            self.state, self.error = RankState.FAILED, f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, (InjectedFault, TrainingDiverged, PartnerLost)):
                self.error += "\n" + "".join(traceback.format_exception(kind, exc, tb))
            r = self.job.topo.me.replica_id
            self.job.progress.log(f"replica {r} failed: {self.error.splitlines()[0]}")
        self.transport.finish()  # nothing in flight: MPI is this thread's again
        ctl = self.job.control
        ctl.set_state(self.state)
        if self.lead is not None:
            self.lead.monitor_until_stop()
        else:
            self.job.wait_until(ctl.stop_requested, "waiting for the lead to stop the job")
        return True
