"""A shard rank's whole life: take its slice, serve pushes until the job stops.

Every algorithm that keeps its parameters on the shards (Downpour, and later
EASGD's center and Sandblaster's vectors) runs its shard ranks through
:func:`start` and :func:`serve`, and passes ``server.serve_once`` to the
runtime's shutdown as the shard's idle work.
"""

from __future__ import annotations

from dbnet.model import init_params
from dbnet.mp.plan import from_canonical
from dbnet.ps.shard import ShardServer
from dbnet.ps.windows import PSWindows
from dbnet.runtime.control import RankState


def start(job, windows: PSWindows) -> ShardServer:
    """This shard's server, its slice initialized from the seed or the checkpoint resumed (re-sliced if the
    shard count changed)."""
    L = windows.layout
    rule = job.rule
    P = job.topo.partitions
    if job.resume.path:
        params, state = job.resume.params_slice(L.lo, L.hi, rule.state_names, job.spec, P)
        version = job.resume.shard_versions[job.topo.me.shard_id]
    else:  # the shards hold the partition-major vector (the canonical one when P = 1)
        params, state, version = from_canonical(job.spec, P, init_params(job.spec, job.cfg.run.seed))[L.lo: L.hi], None, 0
    ps = job.cfg.ps
    return ShardServer(windows, rule, params, state, version, ps.apply_chunk, ps.snapshot_seconds)


def serve(job, server: ShardServer) -> None:
    """Apply pushes and answer snapshots until the lead sets STOP (the lead's heartbeat is watched)."""
    job.control.set_state(RankState.RUNNING)
    job.maybe_crash(0)

    def idle() -> bool:
        busy = server.serve_once()
        job.maybe_crash(server.version)
        return busy

    # Idle back-off of at most 0.2 ms: with MPICH a replica's operation on this shard may need it to call MPI.
    job.wait_until(job.control.stop_requested, "serving the replicas", idle=idle, max_sleep=2e-4)


def stats(server: ShardServer) -> dict:
    return {"role": "shard", "state": "done", **server.stats()}
