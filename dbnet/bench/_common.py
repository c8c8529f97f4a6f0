"""Helpers shared by the benchmarks and their worker: model sizes, timing, memory.

Imports only the standard library, so a PyTorch worker process does not load
Numba (its peak RSS must be PyTorch's own).
"""

from __future__ import annotations

import os
import resource
import statistics
import time

#: The DistBelief speech model: 440 - 2560x4 sigmoid - 8192 softmax (41.78M params).
SPEECH = (440, 2560, 2560, 2560, 2560, 8192)
#: The model of ``--quick`` runs (smoke tests).
TINY = (440, 64, 64, 10)


def n_params(sizes: tuple[int, ...]) -> int:
    """Weights plus biases of the MLP with layer widths ``sizes``."""
    return sum(i * o + o for i, o in zip(sizes, sizes[1:]))


def median_seconds(fn, repeats: int, min_seconds: float = 0.2) -> float:
    """Median over ``repeats`` samples of the seconds one ``fn()`` takes.

    One untimed call first (JIT compilation, page faults); then each sample
    times enough back-to-back calls to last ``min_seconds`` and divides.
    """
    fn()
    t = time.perf_counter()
    fn()
    calls = max(1, int(min_seconds / max(time.perf_counter() - t, 1e-9)))
    samples = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t) / calls)
    return statistics.median(samples)


def rss_bytes() -> int:
    """Resident set size of this process now (``/proc/self/statm``; 0 if unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def original_env() -> dict[str, str]:
    """The environment this process was started with, before dbnet's tuning changed it.

    Read from ``/proc/self/environ`` (Linux); elsewhere, the current environment.
    """
    try:
        with open("/proc/self/environ", "rb") as f:
            items = f.read().split(b"\0")
    except OSError:
        return dict(os.environ)
    return dict(item.decode(errors="replace").partition("=")[::2] for item in items if b"=" in item)
