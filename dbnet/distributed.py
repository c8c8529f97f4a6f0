"""Entry point of every rank of a distributed run (``mpiexec -n N dbnet train CONFIG``).

Start-up is validated before any rank commits to a collective it could be
left alone in: rank 0 reads and validates the config (or the run directory
to resume) and imports the dataset if needed, then broadcasts the resolved
config or the error; every rank then checks the world size against the
topology.  Both checks fail identically on every rank: rank 0 prints one
line and every rank exits with status 2.  After that, an exception on any
rank aborts the whole job with that rank's message (MPI_Abort).
"""

from __future__ import annotations

import os
import sys

from dbnet import config as config_mod
from dbnet import mpi
from dbnet.errors import ConfigError, DbnetError
from dbnet.progress import Progress


def _algorithms():
    from dbnet.algorithms import downpour

    return {"downpour": downpour.run}


def main(config_path: str | None, overrides: list[str], resume_dir: str | None, quiet: bool) -> int:
    MPI = mpi.init()
    world = MPI.COMM_WORLD
    rank = world.Get_rank()

    payload = None
    if rank == 0:
        payload = _startup(config_path, overrides, resume_dir)
    payload = world.bcast(payload, root=0)
    if payload[0] == "error":
        if rank == 0:
            print(f"dbnet: error: {payload[1]}", file=sys.stderr)
        return 2
    _, cfg_toml, data_path, ckpt_path, run_dir = payload
    cfg = config_mod.from_toml_text(cfg_toml)

    from dbnet.topology import build_topology

    try:
        t = cfg.topology
        topo = build_topology(world, t.shards, t.replicas, t.partitions)
    except ConfigError as e:
        if rank == 0:
            print(f"dbnet: error: {e}", file=sys.stderr)
        return 2

    from dbnet import checkpoint as ckpt_mod
    from dbnet.rundir import RunDir
    from dbnet.threads import per_rank, set_threads

    set_threads(per_rank(topo.comm, cfg.run.threads))

    try:
        rd = resume = None
        if topo.is_lead:
            rd = RunDir(run_dir) if run_dir else RunDir.create(cfg)
            resume = ckpt_mod.load(ckpt_path) if ckpt_path else None
            progress = Progress(None, enabled=False if quiet else None)
            if resume is not None:
                progress.log(f"resuming {rd.path} from {ckpt_path}")
        else:
            progress = Progress(None, enabled=False, stream=open(os.devnull, "w"))
        summary = _algorithms()[cfg.train.algorithm](cfg, topo, data_path, rd=rd, resume=resume,
                                                      resume_path=ckpt_path, progress=progress)
    except BaseException as e:  # noqa: BLE001 - any failure here must end every rank
        mpi.fail(topo.comm, topo.me.describe(), e, code=2 if isinstance(e, DbnetError) else 1)
        raise  # not reached
    code = 0
    if topo.is_lead:
        from dbnet.cli import print_summary

        print_summary(summary)
        if summary.get("lost_replicas"):
            print(f"lost replicas: {summary['lost_replicas']} (see summary.json for their errors)")
        if summary["stopped_because"] == "all replicas failed":
            code = 1
    topo.free()
    return code


def _startup(config_path, overrides, resume_dir) -> tuple:
    """Rank 0: everything that can fail before the ranks split, as a broadcastable payload."""
    from dbnet.build import dataset_file

    try:
        if resume_dir:
            from dbnet.train import resume_config

            cfg, rd, ck = resume_config(resume_dir, overrides)
            if "replica_positions" not in ck.extra:
                raise ConfigError(f"{resume_dir}: its checkpoint was not written by a distributed run")
            run_dir, ckpt = str(rd.path), str(rd.latest_checkpoint())
        else:
            if not config_path:
                raise ConfigError("dbnet train needs a CONFIG file or --resume RUN_DIR")
            cfg = config_mod.load(config_path, overrides)
            run_dir = ckpt = None
        if not cfg.distributed:
            raise ConfigError(f"train.algorithm = {cfg.train.algorithm!r} runs in one process: "
                              f"run it without mpiexec/srun (dbnet train CONFIG)")
        data_path = str(dataset_file(cfg.data))
        return ("ok", config_mod.to_toml(cfg), data_path, ckpt, run_dir)
    except DbnetError as e:
        return ("error", str(e))
