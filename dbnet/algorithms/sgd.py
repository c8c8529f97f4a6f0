"""Minibatch SGD on one model replica: the reference every distributed algorithm is compared to.

With ``topology.partitions = 1`` it runs in one process.  With P > 1 it runs
under ``mpiexec -n P``: the replica is split into P model partitions
(:mod:`dbnet.mp`), every partition reads the same minibatches, computes its
part of the network and applies the update rule to its own parameters; the
partitions agree on every evaluation, checkpoint and stop (the lead decides
and broadcasts, so no partner is left waiting).  Checkpoints hold the
canonical parameter order, so a run resumes with any P.

Deterministic: the same config (seed) gives the same parameters, and a run
resumed from a checkpoint gives the same parameters as an uninterrupted one
(the data order is a function of (seed, epoch) and the position in the epoch
is checkpointed).
"""

from __future__ import annotations

import math
import time

import numpy as np

from dbnet import checkpoint as ckpt_mod
from dbnet.build import build_spec, dataset_file
from dbnet.config import Config, to_toml
from dbnet.data import H5Dataset
from dbnet.errors import TrainingDiverged
from dbnet.evaluate import evaluate
from dbnet.loop import Every, Limits
from dbnet.metrics import Metrics
from dbnet.model import init_params
from dbnet.network import Network
from dbnet.optim import UpdateRule
from dbnet.progress import Progress
from dbnet.rundir import RunDir, make_summary
from dbnet.threads import set_threads


class _Solo:
    """One process holds the whole replica."""

    lead, parts, comm = True, 1, None

    def local(self, spec, canonical: np.ndarray) -> np.ndarray:
        return canonical

    def decide(self, flags: list[int]) -> list[int]:
        return flags

    def canonical(self, spec, local: np.ndarray) -> np.ndarray:
        return local

    def stats(self, net) -> dict:
        return {}


class _Partitions:
    """P ranks, one replica (collective over ``comm``, the replica's communicator; the lead is its rank 0)."""

    def __init__(self, comm, timeout: float):
        self.comm, self.timeout = comm, timeout
        self.parts, self.part = comm.Get_size(), comm.Get_rank()
        self.lead = self.part == 0
        self._flags = np.zeros(3, np.int64)

    def local(self, spec, canonical: np.ndarray) -> np.ndarray:
        from dbnet.mp.plan import from_canonical

        return from_canonical(spec, self.parts, canonical, part=self.part)

    def decide(self, flags: list[int]) -> list[int]:
        """The lead's ``flags`` on every partition (a bounded wait: a partner that stopped is named)."""
        from mpi4py import MPI

        from dbnet.mp.exchange import wait_all

        self._flags[: len(flags)] = flags
        req = self.comm.Ibcast([self._flags, MPI.INT64_T], root=0)
        wait_all([req], self.timeout, "the lead partition's decision (evaluate, checkpoint, stop)")
        return [int(v) for v in self._flags[: len(flags)]]

    def canonical(self, spec, local: np.ndarray) -> np.ndarray | None:
        """Gather every partition's ``local`` range on the lead, in the canonical order (collective, bounded)."""
        from mpi4py import MPI

        from dbnet.mp.exchange import wait_all
        from dbnet.mp.plan import part_ranges, to_canonical

        ranges = part_ranges(spec, self.parts)
        full = np.empty(spec.n_params, np.float32) if self.lead else None
        counts = [hi - lo for lo, hi in ranges]
        req = self.comm.Igatherv([local, MPI.FLOAT], [full, (counts, [lo for lo, _ in ranges]), MPI.FLOAT]
                                 if self.lead else None, root=0)
        wait_all([req], self.timeout, "every partition's parameters for a checkpoint")
        return to_canonical(spec, self.parts, full) if self.lead else None

    STAT_KEYS = ("compute_seconds", "halo_seconds", "halo_bytes", "gather_seconds", "gather_bytes",
                 "softmax_seconds")

    def stats(self, net) -> dict:
        """Every partition's parameters and time/bytes per kind, on the lead (collective, bounded)."""
        from mpi4py import MPI

        from dbnet.mp.exchange import wait_all

        mine = np.array([net.n_params] + [net.stats[k] for k in self.STAT_KEYS], np.float64)
        every = np.empty((self.parts, mine.size), np.float64) if self.lead else None
        wait_all([self.comm.Igather([mine, MPI.DOUBLE], [every, MPI.DOUBLE] if self.lead else None, root=0)],
                 self.timeout, "every partition's statistics")
        if not self.lead:
            return {}
        return {"partitions": [{"partition": p, "params": int(row[0]),
                                **{k: (int(v) if k.endswith("bytes") else float(v))
                                   for k, v in zip(self.STAT_KEYS, row[1:])}} for p, row in enumerate(every)]}


def run(cfg: Config, rd: RunDir, resume: ckpt_mod.Checkpoint | None, progress: Progress) -> dict:
    """Train ``cfg`` in this process, writing into ``rd``; returns the summary dict."""
    if cfg.run.threads:
        set_threads(cfg.run.threads)
    return _train(cfg, rd, resume, progress, dataset_file(cfg.data), _Solo())


def run_partitioned(job) -> dict | None:
    """Every partition rank calls this (collective over ``job.topo.replica_comm``); the lead returns the summary."""
    topo = job.topo
    resume = job.checkpoint
    if job.resume.path and not topo.is_lead:
        resume = ckpt_mod.load(job.resume.path, state_names=job.rule.state_names)
    group = _Partitions(topo.replica_comm, job.timeout)
    summary = _train(job.cfg, job.rd, resume, job.progress, job.data_path, group)
    job.barrier("every partition to finish")
    return summary


def _train(cfg: Config, rd, resume, progress: Progress, path, group) -> dict | None:
    tc = cfg.train
    with H5Dataset(path, "train") as train, H5Dataset(path, "test") as test:
        spec = build_spec(cfg.model, train)
        net = Network(spec, tc.batch_size, comm=group.comm, timeout=cfg.comm.timeout_seconds)
        rule = UpdateRule(cfg.optimizer)
        if resume is None:
            params = group.local(spec, init_params(spec, cfg.run.seed))
            state = rule.init_state(params.size)
            loop = ckpt_mod.LoopState()
            metrics = Metrics()
        else:
            params = group.local(spec, resume.params)
            state = {k: group.local(spec, v) for k, v in resume.optimizer.items()}
            loop, metrics = resume.loop, resume.metrics
        grad = np.empty_like(params)
        steps_per_epoch = train.n_batches(tc.batch_size)
        limits = Limits(tc, steps_per_epoch)
        progress.total = limits.max_steps
        where = f"{group.parts} partitions, " if group.parts > 1 else ""
        progress.log(f"sgd: {spec.describe()} on {train.name} ({train.n_examples} train / {test.n_examples} test), "
                     f"{where}batch {tc.batch_size}, {cfg.optimizer.rule} lr {cfg.optimizer.lr:g}; "
                     f"run dir {rd.path if rd else '-'}")
        evals = Every(tc.eval_every_steps, tc.eval_every_seconds, loop.step)
        ckpts = Every(tc.checkpoint_every_steps, tc.checkpoint_every_seconds, loop.step)
        t_start = time.monotonic() - loop.wall_seconds
        loss_sum, loss_n = 0.0, 0

        def wall() -> float:
            return time.monotonic() - t_start

        def do_eval() -> float:  # collective: every partition evaluates its part
            nonlocal loss_sum, loss_n
            test_loss, acc = evaluate(net, params, test, tc.batch_size, tc.eval_examples)
            train_loss = loss_sum / loss_n if loss_n else float("nan")
            loss_sum, loss_n = 0.0, 0
            if group.lead:
                metrics.append(wall_seconds=wall(), examples=loop.examples_seen, step=loop.step,
                               train_loss=train_loss, test_loss=test_loss, test_accuracy=acc)
                progress.log(f"step {loop.step:7d}  epoch {loop.examples_seen / train.n_examples:6.2f}  "
                             f"{wall():7.1f} s  train loss {train_loss:7.4f}  test loss {test_loss:.4f}  "
                             f"test acc {100 * acc:.2f}%")
            evals.reset(loop.step)
            return acc

        def save_checkpoint() -> None:  # collective: the lead gathers and writes
            loop.wall_seconds = wall()
            full = group.canonical(spec, params)
            full_state = {k: group.canonical(spec, v) for k, v in state.items()}
            if group.lead:
                rd.save_checkpoint(ckpt_mod.Checkpoint(full, full_state, loop, to_toml(cfg), metrics),
                                   tc.keep_checkpoints)
                rd.save_metrics(metrics, f"{cfg.run.name}: sgd, {spec.describe()}")
            ckpts.reset(loop.step)

        if group.decide([int(group.lead and not len(metrics))])[0]:
            do_eval()
        reason = limits.reason(loop.step, wall(), metrics.last("test_accuracy")) if group.lead else None
        stop = group.decide([int(reason is not None)])[0]
        while not stop:
            for x, y in train.batches(tc.batch_size, seed=cfg.run.seed, epoch=loop.epoch, start_batch=loop.batch_in_epoch):
                t0 = time.perf_counter()
                loss, _ = net.loss_and_grad(params, x, y, grad)
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"step {loop.step}: training loss is {loss}; lower optimizer.lr (now {cfg.optimizer.lr:g})"
                    )
                rule.apply(params, grad, state)
                loop.train_seconds += time.perf_counter() - t0
                loop.step += 1
                loop.batch_in_epoch += 1
                loop.examples_seen += len(y)
                loss_sum += loss / len(y)
                loss_n += 1
                if progress.tty:  # no string formatting in the hot loop of a batch job
                    progress.update(loop.step, f"loss {loss / len(y):.4f}  {loop.examples_seen / max(loop.train_seconds, 1e-9):,.0f} ex/s")
                acc = do_eval() if group.decide([int(group.lead and evals.due(loop.step))])[0] else None
                if group.lead:
                    reason = limits.reason(loop.step, wall(), acc)
                stop, ckpt = group.decide([int(reason is not None), int(group.lead and ckpts.due(loop.step))])
                if not stop and ckpt:
                    save_checkpoint()
                if stop:
                    break
            else:
                loop.epoch += 1
                loop.batch_in_epoch = 0
        if group.decide([int(group.lead and metrics.rows["step"][-1] != loop.step)])[0]:
            do_eval()
        save_checkpoint()
        part_stats = group.stats(net)
        if not group.lead:
            return None
        progress.close()
        extra = {"topology": {"partitions": group.parts, "replicas": 1, "shards": 0}, **part_stats}
        return make_summary(cfg, rd, metrics, loop, reason, spec, algorithm="sgd", dataset=train.name,
                            n_train=train.n_examples, extra=extra)
