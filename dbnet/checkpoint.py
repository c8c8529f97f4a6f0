"""Training checkpoints: one HDF5 file holding everything needed to resume.

Layout: ``/params`` (n_params,) float32, ``/optimizer/<name>`` (n_params,)
float32 per state array of the update rule, ``/metrics/*`` (the curves so
far), ``/extra/*`` (algorithm-specific arrays, e.g. Downpour's replica positions), root attributes for the loop position (``step``, ``epoch``,
``batch_in_epoch``, ``examples_seen``, ``wall_seconds``, ``train_seconds``)
and ``config`` (the resolved TOML).  Files are written atomically; the loader
validates every piece and raises :class:`~dbnet.errors.CheckpointError`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from dbnet.atomic import atomic_path
from dbnet.errors import CheckpointError
from dbnet.metrics import Metrics

_NAME = re.compile(r"^ckpt-(\d{9})\.h5$")


@dataclass
class LoopState:
    """Where the training loop is: enough to continue with the same data order."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    examples_seen: int = 0
    wall_seconds: float = 0.0
    train_seconds: float = 0.0


@dataclass
class Checkpoint:
    params: np.ndarray
    optimizer: dict[str, np.ndarray]
    loop: LoopState
    config_toml: str
    metrics: Metrics
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # algorithm-specific, e.g. replica positions


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:09d}.h5"


def save(path: str | Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = "dbnet-checkpoint"
            f.attrs["format_version"] = 1
            f.attrs["config"] = ckpt.config_toml
            for k, v in asdict(ckpt.loop).items():
                f.attrs[k] = v
            f.create_dataset("params", data=ckpt.params)
            opt = f.create_group("optimizer")
            for name, arr in ckpt.optimizer.items():
                opt.create_dataset(name, data=arr)
            ckpt.metrics.write_group(f.create_group("metrics"))
            ex = f.create_group("extra")
            for name, arr in ckpt.extra.items():
                ex.create_dataset(name, data=arr)


def load(path: str | Path, n_params: int | None = None, state_names: tuple[str, ...] | None = None) -> Checkpoint:
    """Read and validate a checkpoint; ``n_params``/``state_names`` check it fits the model and rule."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable HDF5 checkpoint ({e})") from None
    with f:
        if f.attrs.get("format") != "dbnet-checkpoint":
            raise CheckpointError(f"{path}: not a dbnet checkpoint (format attribute missing)")
        if "params" not in f or "optimizer" not in f or "metrics" not in f:
            raise CheckpointError(f"{path}: incomplete checkpoint: needs params, optimizer and metrics")
        params = f["params"][()]
        if params.dtype != np.float32 or params.ndim != 1:
            raise CheckpointError(f"{path}: params must be a 1-D float32 vector, got {params.dtype} {params.shape}")
        if n_params is not None and params.size != n_params:
            raise CheckpointError(f"{path}: holds {params.size} parameters, the model has {n_params}")
        optimizer = {k: f["optimizer"][k][()] for k in f["optimizer"]}
        if state_names is not None and set(optimizer) != set(state_names):
            raise CheckpointError(
                f"{path}: optimizer state {sorted(optimizer)} does not match the update rule's {sorted(state_names)}"
            )
        for k, v in optimizer.items():
            if v.shape != params.shape or v.dtype != np.float32:
                raise CheckpointError(f"{path}: optimizer/{k} has shape {v.shape} {v.dtype}, expected {params.shape} float32")
        try:
            loop = LoopState(**{k: type(getattr(LoopState, k))(f.attrs[k]) for k in LoopState.__dataclass_fields__})
            config_toml = str(f.attrs["config"])
        except KeyError as e:
            raise CheckpointError(f"{path}: missing attribute {e}") from None
        metrics = Metrics.read_group(f["metrics"], str(path))
        extra = {k: f["extra"][k][()] for k in f["extra"]} if "extra" in f else {}
    return Checkpoint(params, optimizer, loop, config_toml, metrics, extra)


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest step first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)


def prune(directory: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints in ``directory``."""
    for p in list_checkpoints(directory)[:-keep]:
        p.unlink(missing_ok=True)
