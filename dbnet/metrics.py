"""Learning curves: test accuracy and loss against wall time and examples seen.

One :class:`Metrics` table per run, a row per evaluation.  Saved as HDF5
(one 1-D dataset per column, written atomically) into the run directory and
into every checkpoint, so a resumed run continues its curves.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from dbnet.atomic import atomic_path
from dbnet.errors import CheckpointError

COLUMNS = ("wall_seconds", "examples", "step", "train_loss", "test_loss", "test_accuracy")


class Metrics:
    """Append-only table with the columns in :data:`COLUMNS` (float64)."""

    def __init__(self, rows: dict[str, list[float]] | None = None):
        self.rows: dict[str, list[float]] = {c: [] for c in COLUMNS}
        if rows:
            for c in COLUMNS:
                self.rows[c] = [float(v) for v in rows[c]]

    def __len__(self) -> int:
        return len(self.rows["step"])

    def append(self, **row: float) -> None:
        if set(row) != set(COLUMNS):
            raise ValueError(f"a metrics row needs exactly {COLUMNS}, got {sorted(row)}")
        for c in COLUMNS:
            self.rows[c].append(float(row[c]))

    def column(self, name: str) -> np.ndarray:
        return np.asarray(self.rows[name], dtype=np.float64)

    def last(self, name: str, default: float = float("nan")) -> float:
        return self.rows[name][-1] if self.rows[name] else default

    def best(self, name: str = "test_accuracy") -> float:
        return max(self.rows[name]) if self.rows[name] else float("nan")

    def write_group(self, group: h5py.Group) -> None:
        for c in COLUMNS:
            group.create_dataset(c, data=self.column(c))

    @classmethod
    def read_group(cls, group: h5py.Group, source: str) -> Metrics:
        missing = [c for c in COLUMNS if c not in group]
        if missing:
            raise CheckpointError(f"{source}: metrics lack column(s) {', '.join(missing)}")
        return cls({c: group[c][()].tolist() for c in COLUMNS})

    def save(self, path: str | Path) -> None:
        """Write ``path`` (HDF5, atomically)."""
        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = "dbnet-metrics"
                self.write_group(f)

    @classmethod
    def load(cls, path: str | Path) -> Metrics:
        try:
            with h5py.File(path, "r") as f:
                return cls.read_group(f, str(path))
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read metrics: {e}") from None
