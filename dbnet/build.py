"""From config to objects: the dataset file and the network spec a config names."""

from __future__ import annotations

from pathlib import Path

from dbnet.config import DataConfig, ModelConfig
from dbnet.data import ensure_dataset
from dbnet.model import NetSpec


def dataset_file(cfg: DataConfig) -> Path:
    """The HDF5 file to train on: ``data.path`` if set, else the cached import of ``data.dataset``."""
    if cfg.path:
        return Path(cfg.path)
    return ensure_dataset(cfg.dataset, segments=cfg.segments or None)


def build_spec(cfg: ModelConfig, dataset) -> NetSpec:
    """An MLP whose inputs and classes match ``dataset`` (anything with ``n_inputs`` and ``n_classes``)."""
    return NetSpec.mlp(dataset.n_inputs, cfg.hidden, dataset.n_classes, cfg.activation)
