"""``dbnet train``: run a config (or resume a run directory) with its algorithm."""

from __future__ import annotations

from pathlib import Path

from dbnet import checkpoint as ckpt_mod
from dbnet import config as config_mod
from dbnet.atomic import write_text_atomic
from dbnet.config import Config
from dbnet.errors import ConfigError
from dbnet.optim import UpdateRule
from dbnet.progress import Progress
from dbnet.rundir import RunDir

#: Keys that ``--set`` may change when resuming: limits and schedules, never the model, data or rule.
RESUMABLE_KEYS = ("train.max_steps", "train.max_epochs", "train.max_seconds", "train.target_accuracy",
                  "train.eval_every_steps", "train.eval_every_seconds", "train.eval_examples",
                  "train.checkpoint_every_steps", "train.checkpoint_every_seconds", "train.keep_checkpoints",
                  "topology.shards", "topology.replicas",  # distributed: re-sliced / re-spread on resume
                  "topology.partitions")  # checkpoints are in the canonical order: any P resumes them


def resume_config(run_dir: str | Path, overrides: list[str]) -> tuple[Config, RunDir, ckpt_mod.Checkpoint]:
    """The config, run directory and newest readable checkpoint of a run to resume.

    Checkpoints that do not load (corrupt, truncated) are skipped with a
    warning on stderr (see :meth:`RunDir.load_latest_checkpoint`); ``ck.path``
    is the file used.  Stale temporaries of killed writes are removed.

    Injected faults (``[faults]``) belong to the run they were set for: a resume starts without
    them unless ``--set faults.KEY=...`` asks again.
    """
    rd = RunDir.open_existing(run_dir)
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in RESUMABLE_KEYS and not key.startswith("faults."):
            raise ConfigError(f"--set {key}: cannot be changed when resuming; allowed: {', '.join(RESUMABLE_KEYS)}, "
                              f"faults.*")
    doc = config_mod.tomllib.loads(rd.config_path.read_text(encoding="utf-8"))
    doc.pop("faults", None)
    cfg = config_mod.from_dict(config_mod.apply_overrides(doc, overrides), source=str(rd.config_path))
    ck = rd.load_latest_checkpoint(state_names=UpdateRule(cfg.optimizer).state_names)
    if config_mod.from_toml_text(ck.config_toml).model != cfg.model:
        raise ConfigError(f"{rd.path}: the checkpoint's [model] differs from config.toml; refusing to resume")
    if overrides:
        write_text_atomic(rd.config_path, config_mod.to_toml(cfg))
    return cfg, rd, ck


def train(cfg: Config, *, rd: RunDir | None = None, resume: ckpt_mod.Checkpoint | None = None,
          progress: Progress | None = None) -> dict:
    """Run ``cfg`` to completion in this process; returns the summary (also in ``rd``)."""
    from dbnet.algorithms import get

    rd = rd or RunDir.create(cfg)
    progress = progress or Progress(None)
    return get(cfg.train.algorithm).run(cfg, rd, resume, progress)
