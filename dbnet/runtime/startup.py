"""Start-up of every rank of a distributed run (``mpiexec -n N dbnet train CONFIG``, or ``srun``).

1. Rank 0 does everything that can fail before the ranks commit to
   collectives: reads and validates the config (or the run directory to
   resume, falling back to its newest readable checkpoint), checks the world
   size against the algorithm's (:func:`dbnet.algorithms.world_size`),
   imports and opens the dataset, checks the model against the topology, and
   only then creates the run directory.  Any exception there, of any type,
   becomes one line.
2. Rank 0 broadcasts the result or the error under a deadline
   (``DBNET_STARTUP_TIMEOUT``, default 600 s: a first import of a dataset
   takes a few seconds): a rank that waits longer aborts the job, naming
   what it waited for.  On an error every rank exits with status 2 and only
   rank 0 prints it.
3. Every rank builds the topology and the control plane, the lead writes
   ``ranks.json`` (rank, role, ids, host, pid, lead) into the run directory,
   and the algorithm runs.  From here any exception on any rank aborts the
   whole job with one message headed by that rank, its role and host
   (:func:`dbnet.mpi.fail`).
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import sys
import time

import numpy as np

from dbnet import config as config_mod
from dbnet import mpi
from dbnet.errors import ConfigError, DbnetError
from dbnet.progress import Progress


def main(config_path: str | None, overrides: list[str], resume_dir: str | None, quiet: bool) -> int:
    MPI = mpi.init()
    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    state = None
    payload = None
    if rank == 0:
        state = {}
        payload = _rank0(config_path, overrides, resume_dir, world.Get_size(), state)
    try:
        payload = bcast_with_deadline(world, payload, float(os.environ.get("DBNET_STARTUP_TIMEOUT", 600)),
                                      "rank 0 to validate the config and open the data")
    except BaseException as e:  # noqa: BLE001
        mpi.fail(world, "start-up", e, code=2)
    if "error" in payload:
        if rank == 0:
            print(f"dbnet: error: {payload['error']}", file=sys.stderr)
        return 2
    try:
        return _run(payload, state, quiet)
    except BaseException as e:  # noqa: BLE001 - any failure here must end every rank
        mpi.fail(world, _role_of(payload, rank), e, code=2 if isinstance(e, DbnetError) else 1)
        raise  # not reached


def _role_of(payload: dict, rank: int) -> str:
    """This rank's role for an error message (never raises: it runs on the way to MPI_Abort)."""
    try:
        from dbnet.topology import rank_layout

        from dbnet.algorithms import get

        cfg = config_mod.from_toml_text(payload["config"])
        roles = rank_layout(*get(cfg.train.algorithm).layout(cfg))
        return roles[rank].describe() if rank < len(roles) else ""
    except BaseException:  # noqa: BLE001
        return ""


def bcast_with_deadline(comm, obj, timeout: float, what: str):
    """``comm.bcast(obj, root=0)`` that gives up after ``timeout`` seconds (collective)."""
    from dbnet.mpi import wait_for

    data = np.frombuffer(pickle.dumps(obj), np.uint8) if comm.Get_rank() == 0 else None
    n = np.array([0 if data is None else data.size], np.int64)
    req = comm.Ibcast(n, root=0)
    wait_for(req.Test, timeout, what, max_sleep=0.01)
    buf = data if data is not None else np.empty(int(n[0]), np.uint8)
    req = comm.Ibcast(buf, root=0)
    wait_for(req.Test, timeout, what, max_sleep=0.01)
    return obj if comm.Get_rank() == 0 else pickle.loads(buf.tobytes())


def _rank0(config_path, overrides, resume_dir, size: int, state: dict) -> dict:
    """Rank 0: everything that can fail before the ranks split; the payload to broadcast."""
    from dbnet import algorithms
    from dbnet.build import build_spec, dataset_file
    from dbnet.data import H5Dataset
    from dbnet.partition import balanced_range
    from dbnet.rundir import RunDir
    from dbnet.topology import size_error

    try:
        ck = None
        if resume_dir:
            from dbnet.train import resume_config

            cfg, rd, ck = resume_config(resume_dir, overrides)
        else:
            if not config_path:
                raise ConfigError("dbnet train needs a CONFIG file or --resume RUN_DIR")
            cfg = config_mod.load(config_path, overrides)
            rd = None
        algo = algorithms.get(cfg.train.algorithm)
        if not cfg.distributed:
            raise ConfigError(f"train.algorithm = {cfg.train.algorithm!r} with topology.partitions = 1 runs in one "
                              f"process: run it without mpiexec/srun (dbnet train CONFIG)")
        need = algo.world_size(cfg)
        if size != need:
            raise ConfigError(size_error(*algo.layout(cfg), False, size))
        data_path = str(dataset_file(cfg.data))
        with H5Dataset(data_path, "test") as test:
            spec = build_spec(cfg.model, test)
        with H5Dataset(data_path, "train") as train:
            n_train = train.n_examples
        R, B = cfg.topology.replicas, cfg.train.batch_size
        n_batches = [(hi - lo) // B for lo, hi in (balanced_range(n_train, R, r) for r in range(R))]
        if min(n_batches) < 1:
            raise ConfigError(f"train.batch_size = {cfg.train.batch_size}: a replica's share of the data "
                              f"({n_train // cfg.topology.replicas} examples) holds no full batch")
        from mpi4py import MPI

        if algo.name != "sgd" and cfg.comm.overlap and MPI.Query_thread() < MPI.THREAD_MULTIPLE:
            raise ConfigError(f"this MPI library gives thread level {MPI.Query_thread()}, below MPI_THREAD_MULTIPLE, "
                              f"which comm.overlap needs (a communication thread beside the main one): "
                              f"set comm.overlap = false")
        if cfg.topology.shards > spec.n_params:
            raise ConfigError(f"topology.shards = {cfg.topology.shards}: more shards than the model's "
                              f"{spec.n_params} parameters")
        if ck is None:
            resume = {}
        elif algo.name == "sgd":  # one replica: the loop state in the checkpoint is all it needs
            resume = {"path": str(ck.path), "examples": ck.loop.examples_seen, "steps": ck.loop.step,
                      "wall_seconds": ck.loop.wall_seconds}
        else:
            resume = _resume_state(cfg, ck, n_batches, n_train)
        if rd is None:
            rd = RunDir.create(cfg)  # last: a failed check leaves no empty run directory behind
        state.update(rd=rd, checkpoint=ck)
        return {"config": config_mod.to_toml(cfg), "data": data_path, "run_dir": str(rd.path), "resume": resume}
    except DbnetError as e:
        return {"error": str(e)}
    except BaseException as e:  # noqa: BLE001 - never leave the other ranks waiting
        return {"error": f"start-up failed: {type(e).__name__}: {e}"}


def _resume_state(cfg, ck, n_batches: list[int], n_train: int) -> dict:
    """Where each replica and shard starts again (pure given the checkpoint), re-spread if the topology changed."""
    t = cfg.topology
    if "replica_steps" in ck.extra:
        steps = [int(s) for s in ck.extra["replica_steps"]]
    elif "replica_positions" in ck.extra:  # format of dbnet <= wave 1: (epoch, batch, step, examples)
        steps = [int(s) for s in ck.extra["replica_positions"][:, 2]]
    else:
        raise ConfigError(f"{ck.path or 'checkpoint'}: not written by a distributed run; resume it with dbnet train")
    note = ""
    old_replicas = len(steps)
    if len(steps) != t.replicas:
        # The data shards change with the replica count: every replica starts at the job's epoch fraction.
        frac = ck.loop.examples_seen / n_train
        steps = [int(frac) * nb + round((frac - int(frac)) * nb) for nb in n_batches]
        note = (f"replicas changed from {old_replicas} to {t.replicas}: every replica resumes at epoch "
                f"{frac:.2f} of its new data shard")
    versions = [int(v) for v in ck.extra.get("shard_versions", [])]
    if len(versions) != t.shards:
        if versions:
            note += (f"{'; ' if note else ''}shards changed from {len(versions)} to {t.shards}: "
                     f"the saved vector is re-sliced, shard versions restart at 0")
        versions = [0] * t.shards
    warm = ck.extra.get("warmstart_done")
    return {"path": str(ck.path), "examples": ck.loop.examples_seen, "steps": ck.loop.step,
            "wall_seconds": ck.loop.wall_seconds, "warmstart_done": bool(warm[0]) if warm is not None else True,
            "replica_steps": steps, "shard_versions": versions, "note": note}


def _run(payload: dict, state: dict | None, quiet: bool) -> int:
    from mpi4py import MPI

    from dbnet import algorithms
    from dbnet.build import build_spec
    from dbnet.data import H5Dataset
    from dbnet.optim import UpdateRule
    from dbnet.runtime.control import Control
    from dbnet.runtime.job import Job, Resume
    from dbnet.threads import per_rank, set_threads
    from dbnet.topology import build_topology

    install_signal_handlers()
    cfg = config_mod.from_toml_text(payload["config"])
    algo = algorithms.get(cfg.train.algorithm)
    topo = build_topology(MPI.COMM_WORLD, *algo.layout(cfg))
    set_threads(per_rank(topo.comm, cfg.run.threads))
    with H5Dataset(payload["data"], "test") as test:
        spec = build_spec(cfg.model, test)
    control = Control(topo)
    lead = topo.is_lead
    assert not lead or state is not None, "the lead must be rank 0 (it holds the run directory)"
    if lead:
        progress = Progress(None, enabled=False if quiet else None)
    else:
        progress = Progress(None, enabled=False, stream=open(os.devnull, "w"))
    job = Job(cfg, topo, control, payload["data"], spec, UpdateRule(cfg.optimizer), Resume(**payload["resume"]),
              rd=state["rd"] if lead else None, checkpoint=state["checkpoint"] if lead else None, progress=progress)
    _write_ranks(job)
    if lead and job.resume.path:
        progress.log(f"resuming {job.rd.path} from {job.resume.path} ({job.resume.examples} examples)")
        if job.resume.note:
            progress.log(f"dbnet: note: {job.resume.note}")
    summary = algo.run_mpi(job)
    control.free()
    code = 0
    if lead:
        from dbnet.progress import print_summary

        print_summary(summary)
        if summary.get("lost_replicas"):
            print(f"lost replicas: {summary['lost_replicas']} (see summary.json for their errors)")
        if summary["stopped_because"] == "all replicas failed":
            code = 1
    topo.free()
    return code


def install_signal_handlers() -> None:
    """SIGUSR1/SIGUSR2 (forwarded by mpiexec from ``dbnet launch`` or a scheduler) ask the lead for a
    checkpoint now; other ranks ignore them (the default action would kill the job)."""
    import signal

    from dbnet.runtime import lead

    def handler(signum, frame):
        lead.checkpoint_requested = True

    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, handler)
    mpi.count_continues()  # deadlines do not count the time this rank spent stopped


def _write_ranks(job) -> None:
    """Gather each rank's host and pid; the lead writes ``ranks.json`` (collective over ``topo.comm``)."""
    from dbnet.atomic import write_text_atomic

    topo = job.topo
    me = {"rank": topo.rank, "role": topo.me.role.value, **topo.me.ids(), "host": socket.gethostname(),
          "pid": os.getpid(), "lead": topo.is_lead}
    everyone = topo.comm.gather(me, root=topo.lead_rank)
    if topo.is_lead:
        write_text_atomic(job.rd.path / "ranks.json", json.dumps(everyone, indent=1) + "\n")
        job.progress.log(f"{topo.size} ranks started ({time.strftime('%H:%M:%S')}); ranks.json in {job.rd.path}")
