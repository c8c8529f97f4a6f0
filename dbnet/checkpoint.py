"""Training checkpoints: one HDF5 file holding everything needed to resume.

Layout (``format_version`` 2)::

    /                 attrs: format="dbnet-checkpoint", format_version=2,
                             config (the resolved TOML), step, epoch, batch_in_epoch,
                             examples_seen, wall_seconds, train_seconds (the loop position),
                             header_crc32
    /params           (n_params,) float32, finite                 attrs: crc32
    /optimizer/<name> (n_params,) float32, per state array of the update rule;  attrs: crc32
    /metrics/<column> the curves so far (see dbnet.metrics)       attrs: crc32
    /extra/<name>     algorithm-specific arrays, e.g. Downpour's replica_steps and shard_versions;  attrs: crc32

An array's ``crc32`` is ``zlib.crc32`` (uint32) of its elements in C order as
little-endian bytes (the same rule as the dataset files, see
:mod:`dbnet.data.h5`).  ``header_crc32`` is ``zlib.crc32`` of the UTF-8 JSON
``{"config": ..., "step": ..., ...}`` of the root attributes (keys sorted,
loop values as Python int/float).  Files are written atomically; :func:`load`
validates every piece, verifies every checksum and raises
:class:`~dbnet.errors.CheckpointError` naming the file and what is wrong.
Version 1 files (the same layout without checksums) still load, unverified.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from dbnet.atomic import atomic_path
from dbnet.errors import CheckpointError
from dbnet.metrics import Metrics

FORMAT = "dbnet-checkpoint"
FORMAT_VERSION = 2
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
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # algorithm-specific, e.g. Downpour's replica_steps
    path: str = ""  # the file it was loaded from (set by load)


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:09d}.h5"


def _crc32(a: np.ndarray) -> int:
    """``zlib.crc32`` of ``a``'s elements in C order as little-endian bytes."""
    a = np.asarray(a)
    return zlib.crc32(np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes())


def _header_crc32(config_toml: str, loop: LoopState) -> int:
    """The checksum of the root attributes (see the module docstring)."""
    doc = {"config": config_toml, **asdict(loop)}
    return zlib.crc32(json.dumps(doc, sort_keys=True).encode())


def _normalised(loop: LoopState) -> LoopState:
    """``loop`` with Python int/float fields (as :func:`load` reads them back)."""
    return LoopState(**{k: type(getattr(LoopState, k))(v) for k, v in asdict(loop).items()})


def save(path: str | Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically, every array with its checksum (``ckpt.path`` is not stored)."""
    loop = _normalised(ckpt.loop)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["config"] = ckpt.config_toml
            for k, v in asdict(loop).items():
                f.attrs[k] = v
            f.attrs["header_crc32"] = np.uint32(_header_crc32(ckpt.config_toml, loop))
            f.create_dataset("params", data=ckpt.params)
            opt = f.create_group("optimizer")
            for name, arr in ckpt.optimizer.items():
                opt.create_dataset(name, data=arr)
            ckpt.metrics.write_group(f.create_group("metrics"))
            ex = f.create_group("extra")
            for name, arr in ckpt.extra.items():
                ex.create_dataset(name, data=arr)
            arrays: list[h5py.Dataset] = []
            f.visititems(lambda _, obj: arrays.append(obj) if isinstance(obj, h5py.Dataset) else None)
            for ds in arrays:  # from what HDF5 stored, read back: small next to the training that made it
                ds.attrs["crc32"] = np.uint32(_crc32(ds[()]))


def load(path: str | Path, n_params: int | None = None, state_names: tuple[str, ...] | None = None) -> Checkpoint:
    """Read, validate and verify a checkpoint; ``n_params``/``state_names`` check it fits the model and rule.

    Raises :class:`CheckpointError` ``"<path>: <what is wrong>"`` if the file
    is unreadable or truncated, a checksum does not match (format 2), a piece
    is missing or of the wrong shape, or ``params`` holds NaN or Inf.
    """
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable HDF5 checkpoint ({e})") from None
    try:
        with f:
            ckpt = _read(f, path, n_params, state_names)
    except (OSError, ValueError, KeyError, TypeError) as e:  # damaged HDF5 structures inside a file that opened
        raise CheckpointError(f"{path}: unreadable checkpoint, corrupt file ({type(e).__name__}: {e})") from None
    ckpt.path = str(path)
    return ckpt


def _read(f: h5py.File, path: Path, n_params: int | None, state_names: tuple[str, ...] | None) -> Checkpoint:
    fmt = f.attrs.get("format")
    if (fmt.decode() if isinstance(fmt, bytes) else fmt) != FORMAT:
        raise CheckpointError(f"{path}: not a dbnet checkpoint (format attribute missing)")
    version = int(f.attrs.get("format_version", -1))
    if version not in (1, FORMAT_VERSION):
        raise CheckpointError(f"{path}: format_version is {version}, this dbnet reads 1 and {FORMAT_VERSION}")
    verify = version >= 2

    def array(name: str) -> np.ndarray:
        ds = f[name]
        a = ds[()]
        if verify:
            stored = ds.attrs.get("crc32")
            if stored is None:
                raise CheckpointError(f"{path}: /{name} has no crc32 attribute (corrupt file)")
            if _crc32(a) != int(stored):
                raise CheckpointError(f"{path}: /{name}: checksum mismatch (corrupt file)")
        return a

    if "params" not in f or "optimizer" not in f or "metrics" not in f:
        raise CheckpointError(f"{path}: incomplete checkpoint: needs params, optimizer and metrics")
    params = array("params")
    if params.dtype != np.float32 or params.ndim != 1:
        raise CheckpointError(f"{path}: params must be a 1-D float32 vector, got {params.dtype} {params.shape}")
    if n_params is not None and params.size != n_params:
        raise CheckpointError(f"{path}: holds {params.size} parameters, the model has {n_params}")
    bad = params.size - int(np.count_nonzero(np.isfinite(params)))
    if bad:
        raise CheckpointError(f"{path}: params hold {bad} non-finite values (NaN or Inf): unusable for training")
    optimizer = {k: array(f"optimizer/{k}") for k in f["optimizer"]}
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
    if verify and int(f.attrs.get("header_crc32", -1)) != _header_crc32(config_toml, loop):
        raise CheckpointError(f"{path}: config and loop attributes: checksum mismatch (corrupt file)")
    if verify:
        for k in f["metrics"]:
            array(f"metrics/{k}")
    metrics = Metrics.read_group(f["metrics"], str(path))
    extra = {k: array(f"extra/{k}") for k in f["extra"]} if "extra" in f else {}
    return Checkpoint(params, optimizer, loop, config_toml, metrics, extra)


def read_slice(path: str | Path, lo: int, hi: int, state_names) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``params[lo:hi]`` and each optimizer state's ``[lo:hi]`` (a parameter-server shard's part).

    Not verified here: the whole file is verified by :func:`load` on the rank
    that chose it (rank 0 at start-up) before the shards read their slices.
    """
    try:
        with h5py.File(path, "r") as f:
            return f["params"][lo:hi], {name: f["optimizer"][name][lo:hi] for name in state_names}
    except (OSError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot read parameters [{lo}:{hi}] ({e})") from None


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
