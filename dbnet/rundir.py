"""The run directory: everything one training run leaves behind.

::

    runs/<name>-<YYYYmmdd-HHMMSS>/
        config.toml          the resolved config (every key)
        metrics.h5           the curves (see dbnet.metrics)
        summary.json         final numbers (see Summary keys below)
        curves.png           test accuracy vs wall time and vs examples
        checkpoints/ckpt-<step>.h5   (step zero-padded to 9 digits; see dbnet.checkpoint)

Only one process (rank 0 in a distributed job) writes here.  Every file is
written atomically (:func:`dbnet.atomic.atomic_path`): a temporary
``.<name>.<random>.tmp`` beside it, renamed over it when complete.  A process
killed mid-write leaves its temporary behind; :meth:`RunDir.open_existing`
removes those.  Resuming loads the newest checkpoint that reads back intact
(:meth:`RunDir.load_latest_checkpoint`).
"""

from __future__ import annotations

import json
import platform
import re
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dbnet import checkpoint as ckpt_mod
from dbnet.atomic import write_text_atomic
from dbnet.config import Config, to_toml
from dbnet.errors import CheckpointError
from dbnet.metrics import Metrics
from dbnet.plot import plot_curves


# The temporaries of dbnet.atomic.atomic_path: tempfile.mkstemp(prefix=".<name>.", suffix=".tmp").
_ATOMIC_TMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def warn_stderr(line: str) -> None:
    """Write one line to stderr."""
    print(line, file=sys.stderr, flush=True)


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.removed_temporaries: list[Path] = []  # what open_existing cleaned up

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
        """The run directory ``path``, opened to resume: stale temporaries of killed writes are removed.

        Only the files named like :func:`~dbnet.atomic.atomic_path`'s
        temporaries (``.<name>.<8 chars>.tmp``) in the directory itself and in
        ``checkpoints/`` are removed: no run may be writing here meanwhile.
        """
        rd = cls(path)
        if not rd.config_path.is_file():
            raise CheckpointError(f"{path}: not a run directory (no config.toml)")
        rd.removed_temporaries = rd._remove_temporaries()
        return rd

    def _remove_temporaries(self) -> list[Path]:
        removed = []
        for folder in (self.path, self.checkpoint_dir):
            if not folder.is_dir():
                continue
            for p in sorted(folder.iterdir()):
                if _ATOMIC_TMP.match(p.name) and p.is_file() and not p.is_symlink():
                    p.unlink(missing_ok=True)
                    removed.append(p)
        return removed

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
        """The path of the newest checkpoint (by step), read or not; :class:`CheckpointError` if none."""
        found = ckpt_mod.list_checkpoints(self.checkpoint_dir)
        if not found:
            raise CheckpointError(f"{self.path}: no checkpoint to resume from in {self.checkpoint_dir}")
        return found[-1]

    def load_latest_checkpoint(
        self, state_names: tuple[str, ...] | None = None, warn: Callable[[str], None] = warn_stderr
    ) -> ckpt_mod.Checkpoint:
        """The newest checkpoint that loads and verifies (its ``.path`` says which file it is).

        Checkpoints are tried newest first; each one that fails
        :func:`dbnet.checkpoint.load` (unreadable, truncated, checksum
        mismatch, NaN parameters, not matching ``state_names``) is skipped
        with ``warn("dbnet: warning: skipping <path>: <reason>")``, and if any
        was skipped the one used is announced with ``warn("dbnet: warning:
        resuming from <path>")``.  Raises :class:`CheckpointError` if there
        is none, or none of them loads.
        """
        found = ckpt_mod.list_checkpoints(self.checkpoint_dir)
        if not found:
            raise CheckpointError(f"{self.path}: no checkpoint to resume from in {self.checkpoint_dir}")
        reasons = []
        for path in reversed(found):
            try:
                ck = ckpt_mod.load(path, state_names=state_names)
            except CheckpointError as e:
                reason = str(e).removeprefix(f"{path}: ")
                reasons.append(reason)
                warn(f"dbnet: warning: skipping {path}: {reason}")
                continue
            if reasons:
                warn(f"dbnet: warning: resuming from {path}")
            return ck
        raise CheckpointError(
            f"{self.path}: none of the {len(found)} checkpoints in {self.checkpoint_dir} is readable "
            f"(the newest, {found[-1].name}: {reasons[0]})"
        )

    def save_checkpoint(self, ckpt: ckpt_mod.Checkpoint, keep: int) -> Path:
        """Write ``ckpt`` as ``checkpoints/ckpt-<step>.h5`` and delete all but the ``keep`` newest.

        Checkpoints of later steps than ``ckpt``'s are deleted first: they
        can only be ones a resume skipped as unreadable (it resumes from the
        newest good one), and left in place they would count among the
        ``keep`` newest and push out the good ones being written.
        """
        path = self.checkpoint_dir / ckpt_mod.checkpoint_name(ckpt.loop.step)
        ckpt_mod.save(path, ckpt)
        for later in ckpt_mod.list_checkpoints(self.checkpoint_dir):
            if later.name > path.name:
                later.unlink(missing_ok=True)
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
