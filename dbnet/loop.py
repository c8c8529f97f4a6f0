"""Pieces every training loop shares: stopping limits and periodic schedules.

Both single-process SGD and the distributed algorithms' coordinating rank use
these, so "stop after N epochs" or "evaluate every 5 s" mean the same thing
everywhere.
"""

from __future__ import annotations

import math
import time

from dbnet.config import TrainConfig


class Every:
    """True every ``steps`` steps and/or every ``seconds`` of wall time (0 disables either)."""

    def __init__(self, steps: int, seconds: float, step0: int = 0):
        self.steps = steps
        self.seconds = seconds
        self._last_step = step0
        self._last_time = time.monotonic()

    def due(self, step: int) -> bool:
        if self.steps and step - self._last_step >= self.steps:
            return True
        return bool(self.seconds) and time.monotonic() - self._last_time >= self.seconds

    def reset(self, step: int) -> None:
        self._last_step = step
        self._last_time = time.monotonic()


class Limits:
    """The ``[train]`` stopping limits, in steps of ``batch_size`` examples.

    ``steps_per_epoch`` converts ``max_epochs`` into steps; the limit reached
    first wins.  :meth:`reason` returns why to stop, or ``None``.
    """

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int):
        limits = [cfg.max_steps] if cfg.max_steps else []
        if cfg.max_epochs:
            limits.append(math.ceil(cfg.max_epochs * steps_per_epoch))
        self.max_steps = min(limits) if limits else None
        self.max_seconds = cfg.max_seconds
        self.target = cfg.target_accuracy

    def reason(self, step: int, wall_seconds: float, accuracy: float | None = None) -> str | None:
        if self.max_steps is not None and step >= self.max_steps:
            return f"reached {self.max_steps} steps"
        if self.max_seconds and wall_seconds >= self.max_seconds:
            return f"reached {self.max_seconds:g} s"
        if self.target and accuracy is not None and accuracy >= self.target:
            return f"reached target accuracy {self.target:g}"
        return None
