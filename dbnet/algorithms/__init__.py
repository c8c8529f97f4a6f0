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
    module: str  # holds the entry points
    layout: Callable  # (Config) -> (shards, replicas, partitions): the ranks' roles
    about: str
    single: str | None = None  # entry point run(cfg, rd, resume, progress) in one process, if it has one
    mpi: str | None = "run"    # entry point run(job) on every rank under MPI

    def world_size(self, cfg) -> int:
        from dbnet.topology import world_size

        return world_size(*self.layout(cfg))

    @property
    def run(self) -> Callable:
        """The single-process entry point, else the MPI one."""
        return getattr(importlib.import_module(self.module), self.single or self.mpi)

    @property
    def run_mpi(self) -> Callable:
        return getattr(importlib.import_module(self.module), self.mpi)


def _ps_layout(cfg) -> tuple[int, int, int]:
    """Replicas x partitions + shards (the parameter-server methods)."""
    t = cfg.topology
    return t.shards, t.replicas, t.partitions


REGISTRY: dict[str, Algorithm] = {
    a.name: a for a in (
        Algorithm("sgd", "dbnet.algorithms.sgd", lambda cfg: (0, 1, cfg.topology.partitions),
                  "minibatch SGD on one replica: one process, or P model partitions under MPI",
                  single="run", mpi="run_partitioned"),
        Algorithm("downpour", "dbnet.algorithms.downpour", _ps_layout,
                  "Downpour SGD on the sharded parameter server (Dean et al. 2012)"),
    )
}


def get(name: str) -> Algorithm:
    return REGISTRY[name]


def world_size(cfg) -> int:
    """MPI ranks that ``cfg`` needs (1 for single-process runs)."""
    return get(cfg.train.algorithm).world_size(cfg)
