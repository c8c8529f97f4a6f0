"""Single-process minibatch SGD: the reference every distributed algorithm is compared to.

One process, the whole parameter vector, the configured update rule applied
after every minibatch.  Deterministic: the same config (seed) gives the same
parameters, and a run resumed from a checkpoint gives the same parameters as
an uninterrupted one (the data order is a function of (seed, epoch) and the
position in the epoch is checkpointed).
"""

from __future__ import annotations

import math
import time

import numpy as np

from dbnet import checkpoint as ckpt_mod
from dbnet.config import Config, to_toml
from dbnet.data import H5Dataset
from dbnet.errors import TrainingDiverged
from dbnet.evaluate import evaluate
from dbnet.loop import Every, Limits
from dbnet.metrics import Metrics
from dbnet.model import Network, init_params
from dbnet.optim import UpdateRule
from dbnet.progress import Progress
from dbnet.build import build_spec, dataset_file
from dbnet.rundir import RunDir, make_summary
from dbnet.threads import set_threads


def run(cfg: Config, rd: RunDir, resume: ckpt_mod.Checkpoint | None, progress: Progress) -> dict:
    """Train ``cfg`` in this process, writing into ``rd``; returns the summary dict."""
    tc = cfg.train
    if cfg.run.threads:
        set_threads(cfg.run.threads)
    path = dataset_file(cfg.data)
    with H5Dataset(path, "train") as train, H5Dataset(path, "test") as test:
        spec = build_spec(cfg.model, train)
        net = Network(spec, tc.batch_size)
        rule = UpdateRule(cfg.optimizer)
        if resume is None:
            params = init_params(spec, cfg.run.seed)
            state = rule.init_state(spec.n_params)
            loop = ckpt_mod.LoopState()
            metrics = Metrics()
        else:
            params, state, loop, metrics = resume.params, resume.optimizer, resume.loop, resume.metrics
        grad = np.empty_like(params)
        steps_per_epoch = train.n_batches(tc.batch_size)
        limits = Limits(tc, steps_per_epoch)
        progress.total = limits.max_steps
        progress.log(f"sgd: {spec.describe()} on {train.name} ({train.n_examples} train / {test.n_examples} test), "
                     f"batch {tc.batch_size}, {cfg.optimizer.rule} lr {cfg.optimizer.lr:g}; run dir {rd.path}")
        evals = Every(tc.eval_every_steps, tc.eval_every_seconds, loop.step)
        ckpts = Every(tc.checkpoint_every_steps, tc.checkpoint_every_seconds, loop.step)
        t_start = time.monotonic() - loop.wall_seconds
        loss_sum, loss_n = 0.0, 0

        def wall() -> float:
            return time.monotonic() - t_start

        def do_eval() -> float:
            nonlocal loss_sum, loss_n
            test_loss, acc = evaluate(net, params, test, tc.batch_size, tc.eval_examples)
            train_loss = loss_sum / loss_n if loss_n else float("nan")
            loss_sum, loss_n = 0.0, 0
            metrics.append(wall_seconds=wall(), examples=loop.examples_seen, step=loop.step,
                           train_loss=train_loss, test_loss=test_loss, test_accuracy=acc)
            progress.log(f"step {loop.step:7d}  epoch {loop.examples_seen / train.n_examples:6.2f}  "
                         f"{wall():7.1f} s  train loss {train_loss:7.4f}  test loss {test_loss:.4f}  "
                         f"test acc {100 * acc:.2f}%")
            evals.reset(loop.step)
            return acc

        def save_checkpoint() -> None:
            loop.wall_seconds = wall()
            rd.save_checkpoint(ckpt_mod.Checkpoint(params, state, loop, to_toml(cfg), metrics), tc.keep_checkpoints)
            rd.save_metrics(metrics, f"{cfg.run.name}: sgd, {spec.describe()}")
            ckpts.reset(loop.step)

        if not len(metrics):
            do_eval()
        reason = limits.reason(loop.step, wall(), metrics.last("test_accuracy"))
        while reason is None:
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
                acc = do_eval() if evals.due(loop.step) else None
                reason = limits.reason(loop.step, wall(), acc)
                if reason is None and ckpts.due(loop.step):
                    save_checkpoint()
                if reason is not None:
                    break
            else:
                loop.epoch += 1
                loop.batch_in_epoch = 0
        if metrics.rows["step"][-1] != loop.step:
            do_eval()
        save_checkpoint()
        progress.close()
        return make_summary(cfg, rd, metrics, loop, reason, spec, algorithm="sgd", dataset=train.name,
                            n_train=train.n_examples)
