"""The lead's duties, the same for every algorithm: warmstart, evaluation, stopping, checkpoints.

The lead is a replica rank (``topo.lead_rank``) that also, between its own
steps (:meth:`Lead.tick`) or after it stopped training
(:meth:`Lead.monitor_until_stop`):

* ends the warmstart (``STARTED``), once, and checkpoints then; a resumed
  run never warms up again;
* evaluates the current parameters (``read_params``) every
  ``train.eval_every_*``;
* decides when to stop (``[train]`` limits, counted over all replicas'
  examples; or every replica failed) and sets ``STOP``;
* writes a checkpoint when training starts, every
  ``train.checkpoint_every_*``, when the warmstart ends, on SIGUSR1/SIGUSR2
  (a scheduler's warning before preemption), and at the end (``snapshot``:
  a consistent copy of the parameters and optimizer state);
* bumps the heartbeat that every waiting rank watches, and names ranks that
  go silent (stopped, swapped out) and come back.

Every MPI operation goes through ``call`` (the communication thread, when
the lead's replica has one).  Any error here is the job's, raised as
:class:`LeadError`.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from dbnet import checkpoint as ckpt_mod
from dbnet.config import to_toml
from dbnet.data import H5Dataset
from dbnet.errors import DbnetError
from dbnet.evaluate import evaluate
from dbnet.loop import Every, Limits
from dbnet.metrics import Metrics
from dbnet.network import Network
from dbnet.mpi import WaitTimeout
from dbnet.runtime.control import Field, RankState
from dbnet.topology import Role

SILENT_SECONDS = 5.0

#: Set by SIGUSR1/SIGUSR2 (see :func:`dbnet.runtime.startup.install_signal_handlers`): checkpoint now.
checkpoint_requested = False


class LeadError(DbnetError):
    """The lead could not evaluate, checkpoint or stop the job: the whole job fails."""


class Lead:
    def __init__(self, job, call: Callable, read_params: Callable[[np.ndarray], None],
                 snapshot: Callable[[], tuple | None], warmstart: tuple[int, float] = (0, 0.0),
                 tick_every: float = 0.0, about: str = ""):
        cfg, tc = job.cfg, job.cfg.train
        self.job, self.cfg, self.call = job, cfg, call
        self.read_params, self.snapshot = read_params, snapshot
        self.ctl, self.topo, self.rd, self.progress = job.control, job.topo, job.rd, job.progress
        self.tick_every = tick_every  # > 0: full ticks at most this often (reads go through the comm thread)
        self._last_tick = 0.0
        self.test = H5Dataset(job.data_path, "test")
        with H5Dataset(job.data_path, "train") as full:
            self.n_train = full.n_examples
        self.limits = Limits(tc, self.n_train // tc.batch_size)
        ck = job.checkpoint
        self.metrics = ck.metrics if ck is not None else Metrics()
        self.wall0 = job.resume.wall_seconds
        self.t0 = time.monotonic()
        self.evals = Every(tc.eval_every_steps, tc.eval_every_seconds, job.resume.steps)
        self.ckpts = Every(tc.checkpoint_every_steps, tc.checkpoint_every_seconds, job.resume.steps)
        self.net = Network(job.spec, tc.batch_size)
        self.buf = np.empty(job.spec.n_params, np.float32)
        self.replica_ranks = self.topo.ranks_of(Role.REPLICA)
        self.reason: str | None = None
        self.loss_sum, self.loss_n = 0.0, 0
        self.train_wall = 0.0
        self.warm = warmstart
        self.started = job.resume.warmstart_done or not any(warmstart)
        self.silent: dict[int, float] = {}
        self.timeline: list[list] = []  # [wall seconds, each replica's step] at every evaluation
        self._beats: dict[int, tuple[int, float]] = {}
        self._last_watch = 0.0
        self.progress.total = self.limits.max_steps
        self.progress.log(f"{cfg.train.algorithm}: {job.spec.describe()} on {self.test.name}, {self.topo.replicas} "
                          f"replicas{f' x {self.topo.partitions} partitions' if self.topo.partitions > 1 else ''} x batch {tc.batch_size}, {self.topo.shards} shards, {cfg.optimizer.rule} lr "
                          f"{cfg.optimizer.lr:g}{', ' + about if about else ''}; run dir {self.rd.path}")
        call(lambda: (self.ctl.write(Field.EXAMPLES, job.resume.examples), self.ctl.beat(0.0)))
        if not len(self.metrics):
            self._evaluate(job.resume.examples)
        if not job.resume.path:
            self.checkpoint()  # a kill before the first interval still has something to resume from
        if self.started:
            call(lambda: self.ctl.write(Field.STARTED, 1))

    def wall(self) -> float:
        return self.wall0 + time.monotonic() - self.t0

    def _maybe_start(self, own_step: int) -> None:
        if self.started:
            return
        steps, seconds = self.warm  # warmstart ends at whichever configured limit comes first
        elapsed = time.monotonic() - self.t0
        if not ((steps and own_step >= steps) or (seconds and elapsed >= seconds)):
            return
        self.started = True
        self.call(lambda: self.ctl.write(Field.STARTED, 1))
        self.progress.log(f"warmstart over after {own_step} steps, {elapsed:.1f} s: "
                          f"all {self.topo.replicas} replicas train")
        self.checkpoint()

    def _evaluate(self, examples: int) -> float:
        self.call(self.read_params, self.buf)
        tc = self.cfg.train
        test_loss, acc = evaluate(self.net, self.buf, self.test, tc.batch_size, tc.eval_examples)
        train_loss = self.loss_sum / self.loss_n if self.loss_n else float("nan")
        self.loss_sum, self.loss_n = 0.0, 0
        step = examples // tc.batch_size
        self.metrics.append(wall_seconds=self.wall(), examples=examples, step=step, train_loss=train_loss,
                            test_loss=test_loss, test_accuracy=acc)
        self.timeline.append([round(self.wall(), 3)] + [self.call(self.ctl.step_of, r) for r in self.replica_ranks])
        self.progress.log(f"examples {examples:9d}  epoch {examples / self.n_train:6.2f}  {self.wall():7.1f} s  "
                          f"train loss {train_loss:7.4f}  test loss {test_loss:.4f}  test acc {100 * acc:.2f}%")
        self.evals.reset(step)
        return acc

    def tick(self, loss: float | None, own_step: int) -> None:
        """After each of the lead's own steps (``loss`` per example), or a monitoring poll (None)."""
        try:
            self._tick(loss, own_step)
        except (WaitTimeout, LeadError):
            raise
        except Exception as e:  # noqa: BLE001
            raise LeadError(f"the lead's duties failed: {type(e).__name__}: {e}") from e

    def _tick(self, loss: float | None, own_step: int) -> None:
        global checkpoint_requested
        if checkpoint_requested:
            checkpoint_requested = False
            self.progress.log("signal: checkpoint requested")
            self.checkpoint()
        if loss is not None:
            self.loss_sum += loss
            self.loss_n += 1
        self._maybe_start(own_step)  # every step: warmstart ends on time even when ticks are rate-limited
        now = time.monotonic()
        if self.tick_every and now - self._last_tick < self.tick_every:
            return
        self._last_tick = now
        self.call(self.ctl.beat)
        if self.reason is not None:
            return
        self._watch()
        examples = self.call(self.ctl.read, Field.EXAMPLES)
        step = examples // self.cfg.train.batch_size
        self.progress.update(step, f"{examples:,} examples")
        acc = self._evaluate(examples) if self.evals.due(step) else None
        reason = self.limits.reason(step, self.wall(), acc)
        if reason is None and self.started:
            states = [self.call(self.ctl.state_of, r) for r in self.replica_ranks]
            if all(s == RankState.FAILED for s in states):
                reason = "all replicas failed"
        if reason is None and self.ckpts.due(step):
            self.checkpoint()
        if reason is not None:
            self.reason = reason
            self.train_wall = self.wall()
            self.call(self.ctl.write, Field.STOP, 1)

    def _watch(self) -> None:
        """Name ranks whose beat stopped for SILENT_SECONDS (stopped, swapped out), and when they return."""
        now = time.monotonic()
        if now - self._last_watch < 1.0:
            return
        self._last_watch = now
        for rank in range(self.topo.size):
            if rank == self.topo.rank:
                continue
            beat = self.call(self.ctl.beat_of, rank)
            last, since = self._beats.get(rank, (None, now))
            if beat != last:
                self._beats[rank] = (beat, now)
                if rank in self.silent:
                    self.progress.log(f"rank {rank} ({self.topo.roles[rank].describe()}) is back after "
                                      f"{now - self.silent.pop(rank):.0f} s")
            elif rank not in self.silent and now - since > SILENT_SECONDS:
                state = self.call(self.ctl.state_of, rank)
                if state in (RankState.RUNNING, RankState.STARTING):
                    self.silent[rank] = since
                    self.progress.log(f"rank {rank} ({self.topo.roles[rank].describe()}) silent for "
                                      f"{now - since:.0f} s; the others go on")

    def monitor_until_stop(self) -> None:
        """The lead's own replica stopped training (or failed): keep leading until the job stops."""
        self.tick_every = 0.0
        if not self.started:
            self.started = True
            self.call(lambda: self.ctl.write(Field.STARTED, 1))
        while self.reason is None:
            self.tick(None, 0)
            time.sleep(0.02)

    def checkpoint(self) -> bool:
        """A consistent checkpoint (False, with a warning, if a shard could not hold still long enough)."""
        ctl = self.ctl
        # Positions and the example count first: whatever is pushed after them is in the parameters read
        # next, and on resume those examples are trained on again rather than skipped.
        steps = np.array([self.call(ctl.step_of, r) for r in self.replica_ranks], np.int64)
        examples = self.call(ctl.read, Field.EXAMPLES)
        snap = self.call(self.snapshot)
        if snap is None:
            self.progress.log("dbnet: warning: a shard resumed updates before the checkpoint was read; "
                              "checkpoint skipped, trying again at the next interval")
            return False
        params, states, extra = snap
        loop = ckpt_mod.LoopState(step=examples // self.cfg.train.batch_size, examples_seen=examples,
                                  wall_seconds=self.wall(), train_seconds=self.train_wall or self.wall())
        extra = {"replica_steps": steps, "warmstart_done": np.array([int(self.started)], np.int64), **extra}
        self.rd.save_checkpoint(ckpt_mod.Checkpoint(params, states, loop, to_toml(self.cfg), self.metrics, extra),
                                self.cfg.train.keep_checkpoints)
        self.rd.save_metrics(self.metrics, f"{self.cfg.run.name}: {self.cfg.train.algorithm}, "
                             f"{self.topo.replicas} replicas, {self.topo.shards} shards, {self.job.spec.describe()}")
        self.ckpts.reset(loop.step)
        return True

    def finish(self) -> dict:
        """After the shutdown's drain: final evaluation and checkpoint."""
        examples = self.ctl.read(Field.EXAMPLES)
        if not self.metrics.rows["examples"] or self.metrics.rows["examples"][-1] != examples:
            self._evaluate(examples)
        for attempt in range(3):
            if self.checkpoint():
                break
        else:
            raise LeadError("the final checkpoint could not be read consistently from the shards (3 tries: "
                            "a shard stopped waiting for the lead's read; raise ps.snapshot_seconds)")
        self.progress.close()
        self.test.close()
        return {"reason": self.reason, "metrics": self.metrics, "examples": examples, "wall": self.wall(),
                "timeline": self.timeline,
                "train_wall": self.train_wall or self.wall(), "n_train": self.n_train}
