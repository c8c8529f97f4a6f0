"""Downpour SGD (Dean et al. 2012, section 4.1) on the sharded parameter server.

Replica r (world rank r, see :mod:`dbnet.topology`) trains on its own
disjoint shard of the training set::

    w <- fetch(); accrued <- 0
    every step:   if step % n_fetch == 0: w <- fetch()
                  g <- gradient(w, next minibatch);  accrued += g;  w -= alpha * g
                  if step % n_push == 0: push(accrued); accrued <- 0

and each shard applies every push to its slice with the ``[optimizer]``
rule (fixed-rate SGD, or Adagrad inside the shard).  Replica 0 is also the
*lead*: it runs the warmstart (it trains alone until
``downpour.warmstart_steps``/``warmstart_seconds`` have passed), evaluates
the parameter server's current parameters on the test set every
``train.eval_every_*``, decides when to stop (``[train]`` limits count the
examples of all replicas together), writes checkpoints and the run
directory.

Faults: an exception in a replica's step (or an injected fault) marks that
replica FAILED; the others go on, and the summary lists the lost replicas.
A NaN/Inf gradient is rejected by the shards and counted, never applied.

Every rank calls :func:`run` (collective over ``topo.comm``).
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass

import numpy as np

from dbnet import checkpoint as ckpt_mod
from dbnet.algorithms.transport import OverlapTransport, SyncTransport
from dbnet.build import build_spec
from dbnet.config import Config, to_toml
from dbnet.data import H5Dataset
from dbnet.errors import DbnetError, TrainingDiverged
from dbnet.evaluate import evaluate
from dbnet.kernels import updates
from dbnet.loop import Every, Limits
from dbnet.metrics import Metrics
from dbnet.model import Network, init_params
from dbnet.mpi import WaitTimeout, barrier
from dbnet.optim import UpdateRule
from dbnet.progress import Progress
from dbnet.ps import PSClient, PSWindows, ShardServer
from dbnet.ps.layout import Ctrl, ReplicaState, Slot, slot
from dbnet.rundir import RunDir, make_summary
from dbnet.topology import Role, Topology


class InjectedFault(RuntimeError):
    """Raised by ``[faults]`` to simulate a replica crashing."""


class LeadError(DbnetError):
    """The lead could not evaluate, checkpoint or stop the job: the whole job fails."""


def _maybe_crash(cfg: Config, topo: Topology) -> None:
    if cfg.faults.crash_rank == topo.rank:
        raise RuntimeError(f"injected crash on rank {topo.rank} (faults.crash_rank), after start-up")


@dataclass
class Position:
    epoch: int = 0
    batch: int = 0
    step: int = 0
    examples: int = 0


def run(cfg: Config, topo: Topology, path: str, *, rd: RunDir | None, resume: ckpt_mod.Checkpoint | None,
        resume_path: str | None, progress: Progress) -> dict | None:
    """Run Downpour on every rank; the lead returns the summary, other ranks None."""
    with H5Dataset(path, "test") as probe:
        spec = build_spec(cfg.model, probe)
    rule = UpdateRule(cfg.optimizer)
    windows = PSWindows(topo, spec.n_params, len(rule.state_names), cfg.downpour.timeout_seconds)
    # No try/finally: freeing a window is collective, and a rank that failed must reach MPI_Abort
    # (in the caller) instead of waiting in Win_free for ranks that will never come.
    t_start = time.monotonic()
    if topo.role is Role.SHARD:
        stats = _shard_main(cfg, topo, windows, spec, rule, resume_path)
        lead_result = None
    else:
        stats, lead_result = _replica_main(cfg, topo, windows, spec, rule, path, rd, resume, resume_path,
                                           progress, t_start)
    all_stats = topo.comm.gather(stats, root=0)  # every rank got here: the shutdown barriers passed
    windows.free()
    if topo.is_lead:
        return _summarize(cfg, topo, rd, spec, lead_result, all_stats)
    return None


# -- shards ---------------------------------------------------------------------------------------

def _shard_main(cfg: Config, topo: Topology, windows: PSWindows, spec, rule: UpdateRule, resume_path):
    L = windows.layout
    dc = cfg.downpour
    if resume_path:
        import h5py

        with h5py.File(resume_path, "r") as f:
            params = f["params"][L.lo: L.hi]
            state = {name: f["optimizer"][name][L.lo: L.hi] for name in rule.state_names}
            version = int(f["extra"]["shard_versions"][topo.me.shard_id])
            examples = int(f.attrs["examples_seen"])
    else:
        params = init_params(spec, cfg.run.seed)[L.lo: L.hi].copy()
        state, version, examples = None, 0, 0
    server = ShardServer(windows, rule, params, state, version, dc.apply_chunk)
    del params, state
    if topo.me.shard_id == 0:
        server.set_ctrl(Ctrl.EXAMPLES, examples)
    barrier(topo.comm, dc.timeout_seconds, "every rank's start-up (parameters in place)")
    _maybe_crash(cfg, topo)

    reader = PSClient(windows, 0, dc.timeout_seconds)  # for shard 0's heartbeat field
    lead_alive = _Liveness(lambda: reader.read(0, Ctrl.HEARTBEAT), dc.timeout_seconds)
    sleep = 20e-6
    while True:
        if server.serve_once():
            sleep = 20e-6
            continue
        if server.stop_requested():
            break
        lead_alive.check("the lead (rank 0) to show signs of life")
        time.sleep(sleep)
        sleep = min(2 * sleep, 2e-4)  # a replica waiting on this shard waits at most ~0.2 ms extra
    # Shutdown: serve until every replica has finished its last push, then drain.
    barrier(topo.comm, dc.timeout_seconds, "replicas to finish (shutdown phase 1)", idle=server.serve_once)
    while server.serve_once():
        pass
    barrier(topo.comm, dc.timeout_seconds, "shutdown phase 2")
    barrier(topo.comm, 10 * dc.timeout_seconds, "the lead's final evaluation and checkpoint")
    return {"role": "shard", **server.stats()}


# -- replicas -------------------------------------------------------------------------------------

def _replica_main(cfg, topo, windows, spec, rule, path, rd, resume, resume_path, progress, t_start):
    from mpi4py import MPI

    r = topo.me.replica_id
    dc, tc = cfg.downpour, cfg.train
    B = tc.batch_size
    client = PSClient(windows, r, dc.timeout_seconds)
    barrier(topo.comm, dc.timeout_seconds, "every rank's start-up (parameters in place)")
    pos = Position()
    if resume_path:
        import h5py

        with h5py.File(resume_path, "r") as f:
            rp = f["extra"]["replica_positions"][()]
        if rp.shape[0] != topo.replicas:
            raise DbnetError(f"{resume_path}: checkpoint has {rp.shape[0]} replicas, the config {topo.replicas}")
        pos = Position(*map(int, rp[r]))
    examples_at_start = pos.examples
    client.report_position(pos.epoch, pos.batch, pos.step, pos.examples)  # a checkpoint before our first push keeps it
    net = Network(spec, B)
    w = np.empty(spec.n_params, np.float32)
    g = np.empty_like(w)
    accrued = np.zeros_like(w) if dc.n_push > 1 else None
    if dc.overlap:
        transport = OverlapTransport(client, dc.n_fetch, spec.n_params, dc.timeout_seconds)
    else:
        transport = SyncTransport(client, dc.n_fetch, dc.read_own_writes)
    lead = None
    if topo.is_lead:
        lead = _Lead(cfg, topo, transport.lead_client, Network(spec, B), spec, rule, path, rd, resume, progress,
                     t_start, tick_every=0.05 if dc.overlap else 0.0)
    compute_seconds = 0.0
    error = None
    state = ReplicaState.DONE
    pending = 0  # examples accrued but not pushed
    with H5Dataset(path, "train") as full:
        max_steps = Limits(tc, full.n_examples // B).max_steps
    limit_examples = max_steps * B if max_steps else None  # every replica stops itself at the job's limit
    with H5Dataset(path, "train", shard=r, n_shards=topo.replicas) as train:
        # Warm up (load or compile every kernel on one real batch), then start together: otherwise
        # a replica still compiling would find the job half done by the others.
        x0, y0 = next(train.batches(B, seed=cfg.run.seed, epoch=0))
        w[:] = 0
        net.loss_and_grad(w, x0, y0, g)
        barrier(topo.group, dc.timeout_seconds, "every replica to be ready")
        _maybe_crash(cfg, topo)
        try:
            if lead is None:
                _wait_started(client, dc.timeout_seconds)
            client.set_state(ReplicaState.RUNNING)
            stop = client.stop_requested()
            while not stop:
                for x, y in train.batches(B, seed=cfg.run.seed, epoch=pos.epoch, start_batch=pos.batch):
                    w = transport.params_for(pos.step, w)
                    if r == cfg.faults.fail_replica and pos.step == cfg.faults.fail_at_step:
                        raise InjectedFault(f"injected fault: replica {r} stops at step {pos.step}")
                    t0 = time.perf_counter()
                    loss, _ = net.loss_and_grad(w, x, y, g)
                    if not math.isfinite(loss):
                        raise TrainingDiverged(f"replica {r} step {pos.step}: training loss is {loss}")
                    if r == cfg.faults.nan_replica and pos.step == cfg.faults.nan_at_step:
                        g[:] = np.nan
                    if accrued is not None:
                        updates.axpy(accrued, 1.0, g)
                    if dc.alpha:
                        updates.sgd(w, g, dc.alpha, 0.0)
                    compute_seconds += time.perf_counter() - t0
                    pos.step += 1
                    pos.batch += 1
                    pos.examples += len(y)
                    pending += len(y)
                    if pos.step % dc.n_push == 0:
                        where = (pos.epoch, pos.batch, pos.step, pos.examples)
                        if accrued is None:
                            g = transport.push(g, pending, where)
                        else:
                            accrued = transport.push(accrued, pending, where)
                            accrued[:] = 0
                        pending = 0
                    if lead is not None:
                        lead.tick(loss / len(y), pos.step)
                    if transport.stop_requested() or (limit_examples and transport.examples_total >= limit_examples):
                        stop = True
                        break
                else:
                    pos.epoch += 1
                    pos.batch = 0
            if pending and accrued is not None:  # no silent losses: push what was accrued
                transport.push(accrued, pending, (pos.epoch, pos.batch, pos.step, pos.examples))
        except Exception as e:  # noqa: BLE001 - a replica's failure must not stop the others ...
            if isinstance(e, (WaitTimeout, MPI.Exception, LeadError)):
                raise  # ... but a lost shard, a broken MPI or a failed lead is the whole job's failure
            state = ReplicaState.FAILED
            error = f"{type(e).__name__}: {e}"
            if not isinstance(e, (InjectedFault, TrainingDiverged)):
                error += "\n" + traceback.format_exc()
            if lead is not None:
                progress.log(f"replica {r} failed at step {pos.step}: {error.splitlines()[0]}")
        transport.finish()  # nothing in flight: MPI is the training thread's again
        client.set_state(state)
        if lead is not None:
            lead.client = client
            lead.tick_every = 0.0
            lead.monitor_until_stop()
        else:
            _wait_stop(client, dc.timeout_seconds)
    barrier(topo.comm, dc.timeout_seconds, "replicas to finish (shutdown phase 1)")
    barrier(topo.comm, dc.timeout_seconds, "shards to drain (shutdown phase 2)")
    lead_result = lead.finish() if lead is not None else None
    barrier(topo.comm, 10 * dc.timeout_seconds, "the lead's final evaluation and checkpoint")
    stats = {
        "role": "replica", "replica": r, "state": state.name.lower(), "error": error,
        "steps": pos.step, "examples": pos.examples, "examples_this_run": pos.examples - examples_at_start,
        "compute_seconds": compute_seconds,
        "exposed_comm_seconds": transport.exposed_seconds, "overlap": dc.overlap,
        **client.stats(),
    }
    return stats, lead_result


class _Lead:
    """Replica 0's extra duties: warmstart, evaluation, stopping, checkpoints, curves."""

    def __init__(self, cfg, topo, client, net, spec, rule, path, rd, resume, progress, t_start, tick_every=0.0):
        self.cfg, self.topo, self.client, self.net, self.spec, self.rule = cfg, topo, client, net, spec, rule
        self.tick_every = tick_every  # > 0: full ticks at most this often (the overlap transport's reads queue)
        self._last_tick = 0.0
        self.rd, self.progress = rd, progress
        tc = cfg.train
        self.test = H5Dataset(path, "test")
        with H5Dataset(path, "train") as full:
            self.n_train = full.n_examples
        self.limits = Limits(tc, self.n_train // tc.batch_size)
        self.metrics = resume.metrics if resume is not None else Metrics()
        self.wall0 = resume.loop.wall_seconds if resume is not None else 0.0
        self.t0 = time.monotonic()
        step0 = resume.loop.step if resume is not None else 0
        self.evals = Every(tc.eval_every_steps, tc.eval_every_seconds, step0)
        self.ckpts = Every(tc.checkpoint_every_steps, tc.checkpoint_every_seconds, step0)
        self.buf = np.empty(spec.n_params, np.float32)  # evaluation and checkpoint copy
        self.states = rule.init_state(spec.n_params)
        self.reason: str | None = None
        self.loss_sum, self.loss_n = 0.0, 0
        self.heartbeat, self.last_beat = 0, 0.0
        self.started = False
        self.train_wall = 0.0
        ds = cfg.downpour
        self.warm = (ds.warmstart_steps, ds.warmstart_seconds)
        progress.total = self.limits.max_steps
        progress.log(
            f"downpour: {spec.describe()} on {self.test.name}, {topo.replicas} replicas x batch {tc.batch_size}, "
            f"{topo.shards} shards, {cfg.optimizer.rule} lr {cfg.optimizer.lr:g}, n_fetch {ds.n_fetch}, "
            f"n_push {ds.n_push}, warmstart {ds.warmstart_steps} steps / {ds.warmstart_seconds:g} s; run dir {rd.path}")
        if not len(self.metrics):
            self._evaluate(0)
        self._maybe_start(0)

    def wall(self) -> float:
        return self.wall0 + time.monotonic() - self.t0

    def _beat(self) -> None:
        now = time.monotonic()
        if now - self.last_beat > 0.5:
            self.heartbeat += 1
            self.client.write(0, Ctrl.HEARTBEAT, self.heartbeat)
            self.last_beat = now

    def _maybe_start(self, own_step: int) -> None:
        if self.started:
            return
        steps, seconds = self.warm  # warmstart ends at whichever configured limit comes first
        elapsed = time.monotonic() - self.t0
        if (steps or seconds) and not ((steps and own_step >= steps) or (seconds and elapsed >= seconds)):
            return
        self.client.write(0, Ctrl.STARTED, 1)
        self.started = True
        if steps or seconds:
            self.progress.log(f"warmstart over after {own_step} steps, {time.monotonic() - self.t0:.1f} s: "
                              f"all {self.topo.replicas} replicas train")

    def _evaluate(self, examples: int) -> float:
        self.client.fetch(self.buf, own_writes=False, count=False)
        test_loss, acc = evaluate(self.net, self.buf, self.test, self.cfg.train.batch_size, self.cfg.train.eval_examples)
        train_loss = self.loss_sum / self.loss_n if self.loss_n else float("nan")
        self.loss_sum, self.loss_n = 0.0, 0
        step = examples // self.cfg.train.batch_size
        self.metrics.append(wall_seconds=self.wall(), examples=examples, step=step, train_loss=train_loss,
                            test_loss=test_loss, test_accuracy=acc)
        self.progress.log(f"examples {examples:9d}  epoch {examples / self.n_train:6.2f}  {self.wall():7.1f} s  "
                          f"train loss {train_loss:7.4f}  test loss {test_loss:.4f}  test acc {100 * acc:.2f}%")
        self.evals.reset(step)
        return acc

    def tick(self, loss: float | None, own_step: int) -> None:
        """After each of the lead's own steps (or a monitoring poll): warmstart, eval, stop, checkpoint.

        Any error here is the job's, not replica 0's: it is raised as :class:`LeadError`.
        """
        try:
            self._tick(loss, own_step)
        except (WaitTimeout, LeadError):
            raise
        except Exception as e:  # noqa: BLE001
            raise LeadError(f"the lead's duties failed: {type(e).__name__}: {e}") from e

    def _tick(self, loss: float | None, own_step: int) -> None:
        if loss is not None:
            self.loss_sum += loss
            self.loss_n += 1
        self._maybe_start(own_step)  # every step: warmstart ends on time even when ticks are rate-limited
        now = time.monotonic()
        if self.tick_every and now - self._last_tick < self.tick_every:
            return
        self._last_tick = now
        self._beat()
        if self.reason is not None:
            return
        examples = self.client.read(0, Ctrl.EXAMPLES)
        step = examples // self.cfg.train.batch_size
        self.progress.update(step, f"{examples:,} examples")
        acc = self._evaluate(examples) if self.evals.due(step) else None
        reason = self.limits.reason(step, self.wall(), acc)
        states = [self.client.read(0, slot(r, Slot.STATE)) for r in range(self.topo.replicas)]
        if reason is None and all(s == ReplicaState.FAILED for s in states):
            reason = "all replicas failed"
        if reason is None and self.ckpts.due(step):
            self.checkpoint()
        if reason is not None:
            self.reason = reason
            self.train_wall = self.wall()
            self.client.write_all_shards(Ctrl.STOP, 1)

    def monitor_until_stop(self) -> None:
        """The lead's own replica has stopped (or failed): keep leading until the job stops."""
        if not self.started:
            self.client.write(0, Ctrl.STARTED, 1)
            self.started = True
        while self.reason is None:
            self.tick(None, 0)
            time.sleep(0.02)

    def checkpoint(self) -> None:
        c = self.client
        # Positions and the example count first: what is pushed after them is in the parameters read
        # next, and on resume those examples are trained on again rather than skipped.
        positions = np.stack([c.read_many(0, slot(r, Slot.EPOCH), 4) for r in range(self.topo.replicas)])
        examples = c.read(0, Ctrl.EXAMPLES)
        versions = c.read_full_state(self.buf, self.states, self.rule.state_names)
        loop = ckpt_mod.LoopState(step=examples // self.cfg.train.batch_size, examples_seen=examples,
                                  wall_seconds=self.wall(), train_seconds=self.train_wall or self.wall())
        extra = {"replica_positions": positions, "shard_versions": np.array(versions, np.int64)}
        self.rd.save_checkpoint(ckpt_mod.Checkpoint(self.buf, self.states, loop, to_toml(self.cfg), self.metrics, extra),
                                self.cfg.train.keep_checkpoints)
        self.rd.save_metrics(self.metrics, f"{self.cfg.run.name}: downpour, {self.topo.replicas} replicas, "
                             f"{self.topo.shards} shards, {self.spec.describe()}")
        self.ckpts.reset(loop.step)

    def finish(self) -> dict:
        """After the shards drained: final evaluation and checkpoint."""
        examples = self.client.read(0, Ctrl.EXAMPLES)
        if not self.metrics.rows["examples"] or self.metrics.rows["examples"][-1] != examples:
            self._evaluate(examples)
        self.checkpoint()
        self.progress.close()
        self.test.close()
        return {"reason": self.reason, "metrics": self.metrics, "examples": examples, "wall": self.wall(),
                "train_wall": self.train_wall or self.wall(), "n_train": self.n_train}


class _Liveness:
    """Raises if a counter (the lead's heartbeat) stops changing for ``timeout`` seconds.

    Reads it at most every ``period`` seconds, so idle loops do not flood shard 0 with reads.
    """

    def __init__(self, read, timeout: float, period: float = 0.1):
        self.read, self.timeout, self.period = read, timeout, period
        self.value, self.since, self.last = None, time.monotonic(), 0.0

    def check(self, what: str) -> None:
        now = time.monotonic()
        if now - self.last < self.period:
            return
        self.last = now
        v = self.read()
        if v != self.value:
            self.value, self.since = v, now
        elif now - self.since > self.timeout:
            raise WaitTimeout(f"no heartbeat for {self.timeout:g} s while waiting for {what}")


def _wait_started(client: PSClient, timeout: float) -> None:
    alive = _Liveness(lambda: client.read(0, Ctrl.HEARTBEAT), timeout)
    while not (client.read(0, Ctrl.STARTED) or client.stop_requested()):
        alive.check("the lead's warmstart to end")
        time.sleep(0.01)


def _wait_stop(client: PSClient, timeout: float) -> None:
    alive = _Liveness(lambda: client.read(0, Ctrl.HEARTBEAT), timeout)
    while not client.stop_requested():
        alive.check("the lead to stop the job")
        time.sleep(0.02)


def _summarize(cfg, topo, rd, spec, lead: dict, all_stats: list[dict]) -> dict:
    replicas = [s for s in all_stats if s["role"] == "replica"]
    shards = [s for s in all_stats if s["role"] == "shard"]
    wall = lead["train_wall"]
    for s in replicas:
        s["examples_per_second"] = s["examples_this_run"] / s["compute_seconds"] if s["compute_seconds"] else 0.0
        busy = s["compute_seconds"] + s["exposed_comm_seconds"]
        s["comm_fraction"] = s["exposed_comm_seconds"] / busy if busy else 0.0  # the training thread's share
    pushes = sum(s["pushes"] for s in replicas)
    fetches = sum(s["fetches"] for s in replicas)
    lost = [s["replica"] for s in replicas if s["state"] == "failed"]
    loop = ckpt_mod.LoopState(step=lead["examples"] // cfg.train.batch_size, examples_seen=lead["examples"],
                              wall_seconds=lead["wall"], train_seconds=wall)

    extra = {
        "topology": topo.describe(),
        "downpour": {k: getattr(cfg.downpour, k) for k in ("n_fetch", "n_push", "alpha", "warmstart_steps",
                                                           "warmstart_seconds", "read_own_writes", "overlap")},
        "lost_replicas": lost,
        "pushes_per_second": pushes / wall if wall else 0.0,
        "fetches_per_second": fetches / wall if wall else 0.0,
        "pushes_rejected": sum(s["pushes_rejected"] for s in shards),
        "replicas": replicas,
        "shards": shards,
    }
    return make_summary(cfg, rd, lead["metrics"], loop, lead["reason"], spec, algorithm="downpour",
                        dataset=cfg.data.path or cfg.data.dataset, n_train=lead["n_train"],
                        extra=extra)
