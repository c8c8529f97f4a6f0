"""Update rules: one place for each, used by every algorithm and every shard.

A rule is applied to a flat float32 parameter slice ``w`` with its gradient
``g`` and its state arrays (same length).  Single-process training applies it
to the whole vector; parameter-server shard k applies the same rule to its
slice with its own state, which is bit-for-bit the same computation because
every kernel in :mod:`dbnet.kernels.updates` is element-wise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dbnet.config import OptimizerConfig
from dbnet.kernels import updates


@dataclass(frozen=True)
class UpdateRule:
    """An update rule with fixed hyperparameters (from ``[optimizer]``)."""

    cfg: OptimizerConfig

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the per-parameter state arrays this rule keeps."""
        return {"sgd": (), "momentum": ("velocity",), "nesterov": ("velocity",), "adagrad": ("sum_sq",)}[self.cfg.rule]

    def init_state(self, n: int) -> dict[str, np.ndarray]:
        """Zeroed state for a slice of ``n`` parameters."""
        return {name: np.zeros(n, np.float32) for name in self.state_names}

    def apply(self, w: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray], lr: float | None = None) -> None:
        """In place: update ``w`` (n,) with gradient ``g`` (n,) and ``state``; ``lr`` overrides the config's."""
        c = self.cfg
        lr = c.lr if lr is None else lr
        if c.rule == "sgd":
            updates.sgd(w, g, lr, c.weight_decay)
        elif c.rule in ("momentum", "nesterov"):
            updates.momentum(w, g, state["velocity"], lr, c.momentum, c.rule == "nesterov", c.weight_decay)
        elif c.rule == "adagrad":
            updates.adagrad(w, g, state["sum_sq"], lr, c.eps)
        else:  # pragma: no cover - config validation forbids it
            raise ValueError(c.rule)
