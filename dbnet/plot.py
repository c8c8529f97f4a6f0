"""PNG plots of a run's learning curves (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from dbnet.atomic import atomic_path
from dbnet.metrics import Metrics


def plot_curves(metrics: Metrics, path: str | Path, title: str) -> None:
    """Test accuracy vs wall time and vs examples seen, side by side, written atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    acc = 100 * metrics.column("test_accuracy")
    for ax, x, label in (
        (axes[0], metrics.column("wall_seconds"), "wall time (s)"),
        (axes[1], metrics.column("examples"), "training examples seen"),
    ):
        ax.plot(x, acc, marker=".", lw=1.5)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
