"""Test-set evaluation of a flat parameter vector."""

from __future__ import annotations

import numpy as np

from dbnet.network import Network


def evaluate(net: Network, params: np.ndarray, test, batch_size: int, max_examples: int = 0) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of ``params`` on ``test`` (an H5Dataset split).

    Reads the split in order, in batches of at most ``min(batch_size, net.max_batch)``;
    ``max_examples > 0`` stops after that many examples (the same ones every time).
    """
    batch_size = min(batch_size, net.max_batch)
    loss = 0.0
    hits = 0
    seen = 0
    for x, y in test.batches(batch_size, seed=0, epoch=0, shuffle=False, drop_last=False):
        if max_examples and seen + len(y) > max_examples:
            x, y = x[: max_examples - seen], y[: max_examples - seen]
        batch_loss, batch_hits = net.evaluate(params, x, y)
        loss += batch_loss
        hits += batch_hits
        seen += len(y)
        if max_examples and seen >= max_examples:
            break
    if seen == 0:
        raise ValueError("evaluation set is empty")
    return loss / seen, hits / seen
