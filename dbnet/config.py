"""Run configuration: TOML into frozen, validated dataclasses.

A config file has one table per section (``[run]``, ``[data]``, ``[model]``,
``[optimizer]``, ``[train]``, ...).  Every key has a default; unknown sections
or keys, wrong types and out-of-range values are rejected with a
:class:`~dbnet.errors.ConfigError` that names the key, the value found, the
rule and the valid keys.  ``--set section.key=value`` overrides any key
(the value is parsed as TOML, falling back to a bare string).

The resolved config (every key, defaults filled in) is written into each run
directory and checkpoint with :func:`to_toml`, and read back by
:func:`from_toml_text`, so a run can always be reproduced from its outputs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from dbnet.errors import ConfigError


def _rule(check: Callable[[Any], bool], text: str, **kw) -> Any:
    """A dataclass field with a validation rule: ``check(value)`` must hold, ``text`` says what it is."""
    return field(metadata={"check": check, "rule": text}, **kw)


def _choice(*options: str, default: str) -> Any:
    return _rule(lambda v: v in options, "one of " + ", ".join(repr(o) for o in options), default=default)


def _positive(default):
    return _rule(lambda v: v > 0, "> 0", default=default)


def _nonneg(default):
    return _rule(lambda v: v >= 0, ">= 0", default=default)


def _feature_ok(text) -> bool:
    from dbnet.model import parse_feature

    try:
        parse_feature(str(text), (1 << 20, 1 << 20, 1), "relu")
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class RunConfig:
    """Naming and seeding."""

    name: str = _rule(lambda v: re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", v) is not None,
                      "letters, digits, '.', '_' and '-', starting with a letter or digit (it names a directory "
                      "inside out_dir)", default="run")
    out_dir: str = "runs"
    seed: int = _nonneg(0)
    threads: int = _nonneg(0)  # threads per process (Numba and BLAS); 0: the node's cores / ranks on it


@dataclass(frozen=True)
class DataConfig:
    """Which dataset: a name imported into the cache on first use, or an explicit HDF5 path."""

    dataset: str = _choice("fashion-mnist", "mnist", "fsdd", default="fashion-mnist")
    path: str = ""  # an HDF5 file in dbnet's layout; overrides `dataset`
    segments: int = _nonneg(0)  # fsdd: label = digit x position segment (0: digit only)


@dataclass(frozen=True)
class ModelConfig:
    """Optional image layers, then a fully connected network; inputs and classes come from the dataset.

    ``features``: image layers in order, e.g. ``["local 5 16", "maxpool 2", "local 5 32", "maxpool 2"]``
    (see :func:`dbnet.model.parse_feature`); they need a dataset with an image shape.
    """

    features: tuple[str, ...] = _rule(lambda v: all(_feature_ok(f) for f in v),
                                      "a list like [\"local 5 16\", \"maxpool 2\"]: 'local K MAPS [stride S]', "
                                      "'maxpool K [stride S]', 'avgpool K [stride S]'", default=())

    hidden: tuple[int, ...] = _rule(lambda v: all(h > 0 for h in v), "a list of positive sizes", default=(256,))
    activation: str = _choice("sigmoid", "tanh", "relu", default="relu")


@dataclass(frozen=True)
class OptimizerConfig:
    """The update rule (see :mod:`dbnet.optim`); shards apply the same rule to their slice."""

    rule: str = _choice("sgd", "momentum", "nesterov", "adagrad", default="sgd")
    lr: float = _positive(0.05)
    momentum: float = _rule(lambda v: 0 <= v < 1, "in [0, 1)", default=0.9)
    eps: float = _positive(1e-8)
    weight_decay: float = _nonneg(0.0)


@dataclass(frozen=True)
class TrainConfig:
    """The training loop: algorithm, batch, stopping, evaluation and checkpoints.

    Training stops at the first of the limits that are set (0 = not set); at
    least one of max_steps, max_epochs, max_seconds must be set.
    """

    algorithm: str = _choice("sgd", "downpour", default="sgd")  # the names of dbnet.algorithms.REGISTRY
    batch_size: int = _positive(128)
    max_steps: int = _nonneg(0)
    max_epochs: float = _nonneg(0.0)
    max_seconds: float = _nonneg(0.0)
    target_accuracy: float = _rule(lambda v: 0 <= v <= 1, "in [0, 1]", default=0.0)
    eval_every_steps: int = _nonneg(0)
    eval_every_seconds: float = _nonneg(5.0)
    eval_examples: int = _nonneg(0)  # 0: the whole test set
    checkpoint_every_steps: int = _nonneg(0)
    checkpoint_every_seconds: float = _nonneg(10.0)  # distributed runs also checkpoint when warmstart ends
    keep_checkpoints: int = _positive(2)

    def __post_init__(self):
        if not (self.max_steps or self.max_epochs or self.max_seconds):
            raise ConfigError(
                "train: no stopping limit: set at least one of train.max_steps, train.max_epochs, train.max_seconds"
            )


@dataclass(frozen=True)
class TopologyConfig:
    """How many ranks do what (distributed algorithms): world size = shards + replicas x partitions."""

    shards: int = _positive(1)
    replicas: int = _positive(1)
    partitions: int = _positive(1)  # ranks per model replica (model parallelism)




@dataclass(frozen=True)
class PSConfig:
    """The sharded parameter server (dbnet.ps), for every algorithm that uses one.

    inbox_slots: gradient slots per shard, shared by all replicas (memory per
    shard: (1 + optimizer state arrays + inbox_slots) x its slice of float32).
    apply_chunk: parameters updated between two MPI calls of a shard.
    snapshot_seconds: the longest a shard pauses its updates for a
    checkpoint's read.  read_own_writes: a fetch first waits until the shards
    applied this replica's previous pushes (without comm.overlap, one
    replica is then exactly SGD).
    """

    inbox_slots: int = _positive(4)
    apply_chunk: int = _positive(1 << 20)
    snapshot_seconds: float = _positive(5.0)
    read_own_writes: bool = True


@dataclass(frozen=True)
class CommConfig:
    """Communication shared by every distributed algorithm.

    overlap: a communication thread does a replica's transfers while it
    computes (see dbnet.comm); the parameters then lack the replica's own
    latest push or two.  timeout_seconds bounds every wait for another rank
    (a shard, the lead, a barrier): past it the job fails with one line
    naming what it waited for.  A rank stopped for less (SIGSTOP, swapped
    out) is waited for, never blamed.
    """

    overlap: bool = True
    timeout_seconds: float = _positive(120.0)


@dataclass(frozen=True)
class DownpourConfig:
    """Downpour SGD (DistBelief section 4.1): its schedule only; the shards apply ``[optimizer]``'s rule.

    n_fetch / n_push: fetch parameters every n_fetch steps, push the accrued
    gradient every n_push steps.  alpha: local step size between fetches
    (0: none).  Warmstart: replica 0 trains alone for warmstart_steps steps
    and/or warmstart_seconds before the others start (never again on resume).
    """

    n_fetch: int = _positive(1)
    n_push: int = _positive(1)
    alpha: float = _nonneg(0.0)
    warmstart_steps: int = _nonneg(0)
    warmstart_seconds: float = _nonneg(0.0)


#: Keys that moved out of a section: (section, key) -> where they are now.
MOVED = {("downpour", "overlap"): "comm.overlap", ("downpour", "timeout_seconds"): "comm.timeout_seconds",
         ("downpour", "read_own_writes"): "ps.read_own_writes", ("downpour", "apply_chunk"): "ps.apply_chunk"}


@dataclass(frozen=True)
class FaultsConfig:
    """Injected faults, for tests and demonstrations (-1: none).

    fail_replica stops at its step fail_at_step as if its step raised;
    nan_replica pushes a gradient full of NaN at its step nan_at_step (the
    shards must reject it); crash_rank raises an unhandled error on that
    world rank at crash_at_step (a replica's own step, a shard's applied
    updates; 0: right after start-up): the whole job must end promptly with
    that rank's message, not hang.
    """

    fail_replica: int = _rule(lambda v: v >= -1, ">= -1", default=-1)
    fail_at_step: int = _nonneg(0)
    nan_replica: int = _rule(lambda v: v >= -1, ">= -1", default=-1)
    nan_at_step: int = _nonneg(0)
    crash_rank: int = _rule(lambda v: v >= -1, ">= -1", default=-1)  # unhandled error: the job must abort
    crash_at_step: int = _nonneg(0)


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration of a run."""

    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig(max_epochs=1.0)
    topology: TopologyConfig = TopologyConfig()
    ps: PSConfig = PSConfig()
    comm: CommConfig = CommConfig()
    downpour: DownpourConfig = DownpourConfig()
    faults: FaultsConfig = FaultsConfig()

    def __post_init__(self):
        for key in ("fail_replica", "nan_replica"):
            value = getattr(self.faults, key)
            if value >= self.topology.replicas:
                raise ConfigError(f"faults.{key} = {value}: must be < topology.replicas = {self.topology.replicas}")
        if self.distributed:
            from dbnet.algorithms import world_size

            n = world_size(self)
            if self.faults.crash_rank >= n:
                raise ConfigError(f"faults.crash_rank = {self.faults.crash_rank}: must be < the world size {n} "
                                  f"(or -1 for none)")

    @property
    def distributed(self) -> bool:
        """True for runs under MPI: distributed algorithms, and SGD on a replica split into partitions."""
        return self.train.algorithm != "sgd" or self.topology.partitions > 1

    def replace(self, **sections) -> Config:
        return dataclasses.replace(self, **sections)


SECTIONS: dict[str, type] = {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}


def _coerce(where: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field's type hint (TOML types), converting int to float and lists to tuples."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} = {value!r}: expected a list of {item.__name__}")
        return tuple(_coerce(f"{where}[{i}]", v, item) for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} = {value!r}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} = {value!r}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} = {value!r}: expected a number")
        if not math.isfinite(value):
            raise ConfigError(f"{where} = {value!r}: expected a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} = {value!r}: expected a string")
        return value
    raise TypeError(f"unsupported config type {hint}")  # a bug in this module, not the user's


def _build_section(name: str, cls: type, table: Any, source: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{name}] must be a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    moved = [k for k in unknown if (name, k) in MOVED]
    if moved:
        raise ConfigError(f"{source}: {name}.{moved[0]} has moved to {MOVED[(name, moved[0])]}")
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {name}.{unknown[0]}; valid keys in [{name}]: {', '.join(fields)}"
        )
    values = {}
    for key, value in table.items():
        where = f"{source}: {name}.{key}"
        value = _coerce(where, value, hints[key])
        meta = fields[key].metadata
        if "check" in meta and not meta["check"](value):
            raise ConfigError(f"{where} = {value!r}: must be {meta['rule']}")
        values[key] = value
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def from_dict(doc: dict, source: str = "config") -> Config:
    """Validate a parsed TOML document into a :class:`Config`."""
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown section [{unknown[0]}]; valid sections: {', '.join(SECTIONS)}")
    sections = {}
    for name, cls in SECTIONS.items():
        if name in doc:
            sections[name] = _build_section(name, cls, doc[name], source)
    try:
        return Config(**sections)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _parse_override(item: str) -> tuple[str, str, Any]:
    key, eq, raw = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not eq or not dot or not section or not name:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set train.batch_size=64")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare string: --set run.name=foo
    return section, name, value


def apply_overrides(doc: dict, overrides: list[str]) -> dict:
    """A copy of ``doc`` with every ``section.key=value`` of ``overrides`` set."""
    doc = {k: dict(v) if isinstance(v, dict) else v for k, v in doc.items()}
    for item in overrides:
        section, name, value = _parse_override(item)
        if section not in SECTIONS:
            raise ConfigError(f"--set {item!r}: unknown section [{section}]; valid sections: {', '.join(SECTIONS)}")
        table = doc.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"--set {item!r}: [{section}] in the config is {table!r}, not a table")
        table[name] = value
    return doc


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a TOML config file."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return from_dict(apply_overrides(doc, overrides or []), source=str(path))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML text (every key of every section)."""
    lines = []
    for name in SECTIONS:
        lines.append(f"[{name}]")
        section = getattr(cfg, name)
        for f in dataclasses.fields(section):
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
        lines.append("")
    return "\n".join(lines)


def from_toml_text(text: str, source: str = "config") -> Config:
    try:
        return from_dict(tomllib.loads(text), source)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
