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
    """Median over ``repeats`` samples of the seconds one ``fn()`` takes (see :func:`median_seconds_each`)."""
    return median_seconds_each([fn], repeats, min_seconds)[0]


def median_seconds_each(fns: list, repeats: int, min_seconds: float = 0.2) -> list[float]:
    """For each function, the median over ``repeats`` samples of the seconds one call takes.

    One untimed call of each first (JIT compilation, page faults); each sample
    times enough back-to-back calls to last ``min_seconds`` and divides.  The
    samples are interleaved (``f0, f1, ..., f0, f1, ...``) so that noise on a
    shared machine hits every function alike, and ratios between them hold.
    """
    calls = []
    for fn in fns:
        fn()
        t = time.perf_counter()
        fn()
        calls.append(max(1, int(min_seconds / max(time.perf_counter() - t, 1e-9))))
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(max(1, repeats)):
        for fn, k, out in zip(fns, calls, samples):
            t = time.perf_counter()
            for _ in range(k):
                fn()
            out.append((time.perf_counter() - t) / k)
    return [statistics.median(s) for s in samples]


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


def reset_peak_rss() -> bool:
    """Restart :func:`peak_rss_bytes` from the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


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
