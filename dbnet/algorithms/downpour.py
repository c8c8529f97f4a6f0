"""Downpour SGD (Dean et al. 2012, section 4.1): the schedule, on dbnet's runtime and parameter server.

Replica r trains on its own disjoint shard of the training set::

    w <- fetch(); accrued <- 0
    every step:   if step % n_fetch == 0: w <- fetch()
                  g <- gradient(w, next minibatch);  accrued += g;  w -= alpha * g
                  if step % n_push == 0: push(accrued); accrued <- 0

Each shard applies every push to its slice with the ``[optimizer]`` rule
(fixed-rate SGD, or Adagrad inside the shard): :mod:`dbnet.ps`.  Start-up,
the lead's duties (warmstart, evaluation, stopping, checkpoints), liveness
and the shutdown are the runtime's: :mod:`dbnet.runtime`.  A replica whose
step raises is marked FAILED and the others go on; a NaN/Inf gradient is
rejected by the shards.  Every rank calls :func:`run` (collective over
``job.topo.comm``); the lead returns the summary.

Model x data parallelism: with ``topology.partitions = P`` a replica is P
ranks (:mod:`dbnet.mp`).  Partition p holds its contiguous range of the
partition-major parameter vector and fetches and pushes only that range,
only from the shards that hold it.  The partitions of a replica read the same
minibatches, fetch and push at the same steps and stop together (the stop is
agreed by a reduction each step).  The lead (replica 0, partition 0) reads
the whole vector for evaluations and checkpoints, in the canonical order.
"""

from __future__ import annotations

import math
import time

import numpy as np

from dbnet.data import H5Dataset
from dbnet.errors import TrainingDiverged
from dbnet.kernels import updates
from dbnet.network import Network
from dbnet.mpi import barrier
from dbnet.mp.plan import part_ranges, to_canonical
from dbnet.ps import PSClient, PSWindows, service
from dbnet.ps.layout import client_id
from dbnet.ps.transport import OverlapTransport, SyncTransport
from dbnet.rundir import make_summary
from dbnet.runtime.lead import Lead
from dbnet.runtime.replica import InjectedFault, TrainingPhase
from dbnet.topology import Role


def run(job):
    spec, rule, topo = job.spec, job.rule, job.topo
    windows = PSWindows(topo, spec.n_params, len(rule.state_names), job.cfg.ps.inbox_slots)
    # (partitions: the shards hold the partition-major vector; see dbnet.mp.plan)
    job.barrier("every rank to create the parameter server's windows")
    if topo.role is Role.SHARD:
        server = service.start(job, windows)
        job.barrier("every shard's parameters to be in place")
        service.serve(job, server)
        all_stats, lead = job.finish(lambda: service.stats(server), idle=server.serve_once)
    else:
        job.barrier("every shard's parameters to be in place")
        stats, lead = _replica(job, windows)
        all_stats, lead = job.finish(lambda: stats, final=lead.finish if lead else None)
    windows.free()  # no try/finally: a failed rank must reach MPI_Abort, not wait in a collective free
    return _summarize(job, lead, all_stats) if topo.is_lead else None


def _replica(job, windows):
    cfg, dc, topo, ctl = job.cfg, job.cfg.downpour, job.topo, job.control
    r, p, P, B = topo.me.replica_id, topo.me.partition_id or 0, topo.partitions, cfg.train.batch_size
    lo, hi = part_ranges(job.spec, P)[p]
    n = hi - lo
    client = PSClient(windows, client_id(r, p, P), job.timeout, lo, hi)  # only this partition's range

    def report(examples: int, step: int) -> int:  # after each push, on the thread that pushed
        ctl.set_step(step)
        ctl.beat()
        return ctl.add_examples(examples if p == 0 else 0)  # a replica's examples are counted once

    if cfg.comm.overlap:
        transport = OverlapTransport(client, report, ctl.stop_requested, dc.n_fetch, n, job.timeout)
    else:
        transport = SyncTransport(client, report, ctl.stop_requested, dc.n_fetch, cfg.ps.read_own_writes)
    net = Network(job.spec, B, comm=topo.replica_comm if P > 1 else None, timeout=job.timeout)
    agree = _agreement(topo.replica_comm, job.timeout) if P > 1 else bool
    w, g = np.zeros(n, np.float32), np.empty(n, np.float32)
    accrued = np.zeros(n, np.float32) if dc.n_push > 1 else None
    step = step0 = job.resume.replica_steps[r] if job.resume.path else 0
    pending, compute_seconds, limit = 0, 0.0, _example_limit(job)
    with H5Dataset(job.data_path, "train", shard=r, n_shards=topo.replicas) as data:
        n_batches = data.n_batches(B)
        net.loss_and_grad(w, *next(data.batches(B, seed=cfg.run.seed, epoch=0)), g)  # compile/load every kernel
        barrier(topo.group, job.timeout, "every replica to be ready")
        lead = _lead(job, client, transport) if topo.is_lead else None
        with TrainingPhase(job, transport, lead) as phase:
            stop = False
            while not stop:
                epoch, batch = divmod(step, n_batches)
                for x, y in data.batches(B, seed=cfg.run.seed, epoch=epoch, start_batch=batch):
                    w = transport.params_for(step, w)                       # fetch every n_fetch steps
                    _inject(job, r, step)
                    t0 = time.perf_counter()
                    loss, _ = net.loss_and_grad(w, x, y, g)                 # gradient
                    if not math.isfinite(loss):
                        raise TrainingDiverged(f"replica {r} step {step}: training loss is {loss}")
                    _inject_nan(job, r, step, g)
                    if accrued is not None:
                        updates.axpy(accrued, 1.0, g)                       # accrue
                    if dc.alpha:
                        updates.sgd(w, g, dc.alpha, 0.0)                    # local step between fetches
                    compute_seconds += time.perf_counter() - t0
                    step, pending = step + 1, pending + len(y)
                    if step % dc.n_push == 0:                               # push every n_push steps
                        if accrued is None:
                            g = transport.push(g, pending, step)
                        else:
                            accrued = transport.push(accrued, pending, step)
                            accrued[:] = 0
                        pending = 0
                    if lead is not None:
                        lead.tick(loss / len(y), step - step0)              # warmstart, evals, stop, checkpoints
                    if agree(transport.stop_requested() or bool(limit and transport.examples_total >= limit)):
                        stop = True  # every partition of the replica stops at the same step
                        break
            if pending and accrued is not None:  # no silent losses: push what was accrued
                transport.push(accrued, pending, step)
    stats = {
        "role": "replica", "replica": r, "state": phase.state.name.lower(), "error": phase.error, "steps": step,
        "examples": step * B, "examples_this_run": (step - step0) * B, "compute_seconds": compute_seconds,
        "exposed_comm_seconds": transport.exposed_seconds, "overlap": cfg.comm.overlap, **client.stats(),
        "partition": p, "params": n, "shards_used": client.shards, **({"model_parallel": net.stats} if P > 1 else {}),
    }
    return stats, lead


def _agreement(comm, timeout: float):
    """``agree(flag)``: True on every partition of the replica if it is True on any (a bounded wait)."""
    from mpi4py import MPI

    from dbnet.mp.exchange import wait_all

    buf = np.zeros(1, np.int32)

    def agree(flag: bool) -> bool:
        buf[0] = int(flag)
        wait_all([comm.Iallreduce(MPI.IN_PLACE, [buf, MPI.INT], MPI.MAX)], timeout,
                 "the replica's partitions to agree on stopping")
        return bool(buf[0])

    return agree


def _lead(job, client: PSClient, transport) -> Lead:
    """The lead's duties, reading the parameter server through the replica's transport.

    With partitions the lead reads the whole (partition-major) vector with a client of its own and
    converts it to the canonical order, so evaluations run the whole network in one process."""
    dc, P, spec = job.cfg.downpour, job.topo.partitions, job.spec
    reader = client if P == 1 else PSClient(client.w, client.r, job.timeout)
    tmp = np.empty(spec.n_params, np.float32) if P > 1 else None

    def read_params(buf):
        if P == 1:
            return reader.fetch(buf, own_writes=False, count=False)
        reader.fetch(tmp, own_writes=False, count=False)
        to_canonical(spec, P, tmp, out=buf)

    return Lead(job, lambda fn, *a: transport.comm.call(fn, *a), read_params, lambda: _snapshot(reader, job),
                (dc.warmstart_steps, dc.warmstart_seconds), tick_every=0.05 if job.cfg.comm.overlap else 0.0,
                about=f"n_fetch {dc.n_fetch}, n_push {dc.n_push}, alpha {dc.alpha:g}, "
                      f"warmstart {dc.warmstart_steps} steps / {dc.warmstart_seconds:g} s")


def _inject(job, r: int, step: int) -> None:
    f = job.cfg.faults
    if r == f.fail_replica and step == f.fail_at_step:
        raise InjectedFault(f"injected fault: replica {r} stops at step {step}")
    job.maybe_crash(step)


def _inject_nan(job, r: int, step: int, g) -> None:
    if r == job.cfg.faults.nan_replica and step == job.cfg.faults.nan_at_step:
        g[:] = np.nan


def _example_limit(job) -> int | None:
    """Every replica stops itself once the job's examples reach the step limit (the lead may be busy)."""
    from dbnet.loop import Limits

    tc = job.cfg.train
    with H5Dataset(job.data_path, "train") as full:
        max_steps = Limits(tc, full.n_examples // tc.batch_size).max_steps
    return max_steps * tc.batch_size if max_steps else None


def _snapshot(client: PSClient, job):
    """The lead's checkpoint read: (params, optimizer state, extras), or None if not consistent."""
    n, names = job.spec.n_params, job.rule.state_names
    params = np.empty(n, np.float32)
    states = {name: np.empty(n, np.float32) for name in names}
    versions = client.snapshot(params, states, names)
    if versions is None:
        return None
    P = job.topo.partitions
    if P > 1:  # checkpoints hold the canonical order: a run resumes with any number of partitions
        params = to_canonical(job.spec, P, params)
        states = {k: to_canonical(job.spec, P, v) for k, v in states.items()}
    return params, states, {"shard_versions": np.array(versions, np.int64)}


def _summarize(job, lead: dict, all_stats: list[dict]) -> dict:
    from dbnet import checkpoint as ckpt_mod

    cfg = job.cfg
    replicas = [s for s in all_stats if s["role"] == "replica"]
    shards = [s for s in all_stats if s["role"] == "shard"]
    wall = lead["train_wall"]
    for s in replicas:
        s["examples_per_second"] = s["examples_this_run"] / s["compute_seconds"] if s["compute_seconds"] else 0.0
        busy = s["compute_seconds"] + s["exposed_comm_seconds"]
        s["comm_fraction"] = s["exposed_comm_seconds"] / busy if busy else 0.0  # the training thread's share
    pushes = sum(s["pushes"] for s in replicas)
    fetches = sum(s["fetches"] for s in replicas)
    loop = ckpt_mod.LoopState(step=lead["examples"] // cfg.train.batch_size, examples_seen=lead["examples"],
                              wall_seconds=lead["wall"], train_seconds=wall)
    extra = {
        "topology": job.topo.describe(),
        "downpour": {k: getattr(cfg.downpour, k) for k in ("n_fetch", "n_push", "alpha", "warmstart_steps",
                                                           "warmstart_seconds")},
        "ps": {k: getattr(cfg.ps, k) for k in ("inbox_slots", "apply_chunk", "read_own_writes")},
        "comm": {"overlap": cfg.comm.overlap, "timeout_seconds": cfg.comm.timeout_seconds},
        "lost_replicas": sorted({s["replica"] for s in replicas if s["state"] == "failed"}),
        "pushes_per_second": pushes / wall if wall else 0.0,
        "fetches_per_second": fetches / wall if wall else 0.0,
        "pushes_rejected": sum(s["pushes_rejected"] for s in shards),
        "replicas": replicas,
        "shards": shards,
        "replica_steps_timeline": lead["timeline"],  # [wall seconds, replica 0's step, ...] at each evaluation
    }
    return make_summary(cfg, job.rd, lead["metrics"], loop, lead["reason"], job.spec, algorithm="downpour",
                        dataset=cfg.data.path or cfg.data.dataset, n_train=lead["n_train"], extra=extra)
