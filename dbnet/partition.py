"""Pure partitioning functions: who owns which slice of a vector or dataset.

Nothing here communicates.  Every rank can compute every other rank's slice,
which is what lets shards, replicas and partitions agree without messages.
"""

from __future__ import annotations


def balanced_range(n: int, parts: int, index: int) -> tuple[int, int]:
    """Half-open range ``[lo, hi)`` of part ``index`` when ``n`` items are cut into ``parts``.

    Parts are contiguous, disjoint, cover ``range(n)`` and differ in length by
    at most one; the first ``n % parts`` parts get the extra item.
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    if not 0 <= index < parts:
        raise ValueError(f"index must be in [0, {parts}), got {index}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    base, extra = divmod(n, parts)
    lo = index * base + min(index, extra)
    hi = lo + base + (1 if index < extra else 0)
    return lo, hi


def shard_slices(n_params: int, n_shards: int) -> list[slice]:
    """The contiguous slice of a flat parameter vector owned by each of ``n_shards`` shards."""
    return [slice(*balanced_range(n_params, n_shards, k)) for k in range(n_shards)]
