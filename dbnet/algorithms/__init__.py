"""The algorithm registry: one place that knows every training method.

Each :class:`Algorithm` says how many MPI ranks a config needs
(``world_size(cfg)``, coordinator included) and how to run it.  ``dbnet
train``, ``dbnet launch``, the tests and the SLURM scripts all ask this
registry, so they cannot disagree.  ``run`` is imported lazily: the registry
is cheap to import.

* single-process algorithms: ``run(cfg, rd, resume, progress) -> summary``
  (see :mod:`dbnet.algorithms.sgd`);
* distributed ones: ``run(job) -> summary | None`` on every rank, with a
  :class:`dbnet.runtime.Job` (the lead returns the summary).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Algorithm:
    name: str
    distributed: bool
    module: str  # holds run()
    world_size: Callable  # (Config) -> MPI ranks, coordinator included
    about: str

    @property
    def run(self) -> Callable:
        return importlib.import_module(self.module).run


def _ps_ranks(cfg) -> int:
    """Replicas x partitions + shards (the parameter-server methods)."""
    from dbnet.topology import world_size

    t = cfg.topology
    return world_size(t.shards, t.replicas, t.partitions)


REGISTRY: dict[str, Algorithm] = {
    a.name: a for a in (
        Algorithm("sgd", False, "dbnet.algorithms.sgd", lambda cfg: 1, "single-process minibatch SGD"),
        Algorithm("downpour", True, "dbnet.algorithms.downpour", _ps_ranks,
                  "Downpour SGD on the sharded parameter server (Dean et al. 2012)"),
    )
}


def get(name: str) -> Algorithm:
    return REGISTRY[name]


def world_size(cfg) -> int:
    """MPI ranks that ``cfg`` needs (1 for single-process algorithms)."""
    return get(cfg.train.algorithm).world_size(cfg)
