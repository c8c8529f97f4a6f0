"""The run directory: everything one training run leaves behind.

::

    runs/<name>-<YYYYmmdd-HHMMSS>/
        config.toml          the resolved config (every key)
        metrics.h5           the curves (see dbnet.metrics)
        summary.json         final numbers (see Summary keys below)
        curves.png           test accuracy vs wall time and vs examples
        checkpoints/ckpt-<step>.h5

Only one process (rank 0 in a distributed job) writes here.  Every file is
written atomically.
"""

from __future__ import annotations

import json
import platform
import socket
import time
from pathlib import Path
from typing import Any

from dbnet import checkpoint as ckpt_mod
from dbnet.atomic import write_text_atomic
from dbnet.config import Config, to_toml
from dbnet.errors import CheckpointError
from dbnet.metrics import Metrics
from dbnet.plot import plot_curves


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, cfg: Config) -> RunDir:
        """A new, empty run directory under ``cfg.run.out_dir`` with the resolved config in it."""
        base = Path(cfg.run.out_dir)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = base / f"{cfg.run.name}-{stamp}"
        n = 1
        while True:
            try:
                path.mkdir(parents=True, exist_ok=False)
                break
            except FileExistsError:
                n += 1
                path = base / f"{cfg.run.name}-{stamp}-{n}"
        rd = cls(path)
        write_text_atomic(rd.config_path, to_toml(cfg))
        return rd

    @classmethod
    def open_existing(cls, path: str | Path) -> RunDir:
        rd = cls(path)
        if not rd.config_path.is_file():
            raise CheckpointError(f"{path}: not a run directory (no config.toml)")
        return rd

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def plot_path(self) -> Path:
        return self.path / "curves.png"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.h5"

    def latest_checkpoint(self) -> Path:
        found = ckpt_mod.list_checkpoints(self.checkpoint_dir)
        if not found:
            raise CheckpointError(f"{self.path}: no checkpoint to resume from in {self.checkpoint_dir}")
        return found[-1]

    def save_checkpoint(self, ckpt: ckpt_mod.Checkpoint, keep: int) -> Path:
        path = self.checkpoint_dir / ckpt_mod.checkpoint_name(ckpt.loop.step)
        ckpt_mod.save(path, ckpt)
        ckpt_mod.prune(self.checkpoint_dir, keep)
        return path

    def save_metrics(self, metrics: Metrics, title: str) -> None:
        metrics.save(self.metrics_path)
        if len(metrics):
            plot_curves(metrics, self.plot_path, title)

    def save_summary(self, summary: dict[str, Any]) -> None:
        write_text_atomic(self.summary_path, json.dumps(summary, indent=2, sort_keys=True) + "\n")


def machine_info() -> dict[str, Any]:
    import os

    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }


def make_summary(cfg: Config, rd: RunDir, metrics: Metrics, loop, reason: str | None, spec, *,
                 algorithm: str, dataset: str, n_train: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``summary.json`` of a finished run (also written to ``rd``).

    ``examples_per_second`` counts training time only (``train_seconds``:
    gradient and update steps); ``wall_seconds`` includes evaluation and
    checkpoints.
    """
    s: dict[str, Any] = {
        "algorithm": algorithm,
        "final_test_accuracy": metrics.last("test_accuracy"),
        "best_test_accuracy": metrics.best("test_accuracy"),
        "final_test_loss": metrics.last("test_loss"),
        "examples_seen": loop.examples_seen,
        "steps": loop.step,
        "epochs": loop.examples_seen / n_train,
        "wall_seconds": loop.wall_seconds,
        "train_seconds": loop.train_seconds,
        "examples_per_second": loop.examples_seen / loop.train_seconds if loop.train_seconds else 0.0,
        "stopped_because": reason,
        "model": spec.describe(),
        "n_params": spec.n_params,
        "dataset": dataset,
        "batch_size": cfg.train.batch_size,
        "optimizer": cfg.optimizer.rule,
        "lr": cfg.optimizer.lr,
        "run_dir": str(rd.path),
        "plot": str(rd.plot_path),
        "machine": machine_info(),
    }
    s.update(extra or {})
    rd.save_summary(s)
    return s
