"""From config to objects: the dataset file and the network spec a config names."""

from __future__ import annotations

from pathlib import Path

from dbnet.config import DataConfig, ModelConfig
from dbnet.data import ensure_dataset
from dbnet.errors import ConfigError
from dbnet.model import NetSpec


def dataset_file(cfg: DataConfig) -> Path:
    """The HDF5 file to train on: ``data.path`` if set, else the cached import of ``data.dataset``."""
    if cfg.path:
        return Path(cfg.path)
    return ensure_dataset(cfg.dataset, segments=cfg.segments or None)


def build_spec(cfg: ModelConfig, dataset) -> NetSpec:
    """The network of ``cfg`` whose inputs and classes match ``dataset`` (anything with ``input_shape`` and
    ``n_classes``).  Raises :class:`ConfigError` if the image layers do not fit the dataset's shape."""
    shape = tuple(getattr(dataset, "input_shape", ())) or (dataset.n_inputs,)
    try:
        return NetSpec.build(shape, cfg.features, cfg.hidden, dataset.n_classes, cfg.activation)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
