"""The runtime every distributed algorithm runs on.

* :mod:`dbnet.runtime.startup` - validate on rank 0, broadcast under a deadline, build the
  topology and control plane, write ``ranks.json``, run the algorithm, abort cleanly on any error.
* :mod:`dbnet.runtime.control` - the control plane: a lock-free window on the lead (stop and
  start flags, heartbeat, example counter, per-rank state, beat and data position) and liveness.
* :mod:`dbnet.runtime.job` - :class:`Job`: what every rank holds, bounded waits, the shutdown.
* :mod:`dbnet.runtime.lead` - the lead's duties: warmstart, evaluation, stopping, checkpoints.

An algorithm (see :mod:`dbnet.algorithms`) gets a :class:`Job` and holds only its schedule.
"""

from dbnet.runtime.job import Job, Resume

__all__ = ["Job", "Resume"]
