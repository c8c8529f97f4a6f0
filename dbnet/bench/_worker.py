"""One training-throughput measurement in a fresh process; prints one JSON line.

``python -m dbnet.bench._worker {dbnet,torch} BATCH STEPS [--warmup 3] [--quick]``

The process first runs one step of a tiny model of the same kind (JIT
compilation, lazy library initialization), records its RSS, then builds the
model, runs ``--warmup`` untimed steps and times ``STEPS`` steps one by one.
The output has the per-step seconds, the process's peak RSS (imports
included), and the model's own memory: the peak RSS from the moment before
the model was built (the peak is reset there where Linux allows) minus the
RSS at that moment.
"""

from __future__ import annotations

import argparse
import json
import time

from dbnet.bench._common import SPEECH, TINY, n_params, peak_rss_bytes, reset_peak_rss, rss_bytes

LR = 0.01


def dbnet_step(sizes: tuple[int, ...], batch: int):
    """A training step of dbnet: ``Network.loss_and_grad`` then the sgd update rule."""
    import numpy as np

    from dbnet.config import OptimizerConfig
    from dbnet.model import NetSpec, init_params
    from dbnet.network import Network
    from dbnet.optim import UpdateRule

    spec = NetSpec.mlp(sizes[0], list(sizes[1:-1]), sizes[-1], "sigmoid")
    net = Network(spec, batch)
    params = init_params(spec, seed=0)
    grad = np.empty_like(params)
    rule = UpdateRule(OptimizerConfig(rule="sgd", lr=LR))
    state = rule.init_state(params.size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch, dtype=np.int32)

    def step():
        net.loss_and_grad(params, x, y, grad)
        rule.apply(params, grad, state)

    return step


def torch_step(sizes: tuple[int, ...], batch: int):
    """A training step of the PyTorch reference: zero_grad, forward, loss, backward, SGD step."""
    import torch

    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(torch.nn.Sigmoid())
    model = torch.nn.Sequential(*layers)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, sizes[0], generator=gen)
    y = torch.randint(0, sizes[-1], (batch,), generator=gen)

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def threads(impl: str) -> str:
    if impl == "torch":
        import torch

        return f"torch {torch.get_num_threads()}"
    import numba

    try:
        from threadpoolctl import threadpool_info

        blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    except ImportError:
        blas = ["?"]
    return f"numba {numba.get_num_threads()}, BLAS {blas[0] if blas else '?'}"


def measure(impl: str, batch: int, steps: int, warmup: int, quick: bool) -> dict:
    make = {"dbnet": dbnet_step, "torch": torch_step}[impl]
    make((8, 4, 4), 2)()  # compile / initialize everything on a tiny model first
    import_peak = peak_rss_bytes()
    before = rss_bytes()
    reset = reset_peak_rss()
    sizes = TINY if quick else SPEECH
    step = make(sizes, batch)
    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t)
    return {"impl": impl, "batch": batch, "n_params": n_params(sizes), "step_seconds": seconds,
            "rss_peak": max(import_peak, peak_rss_bytes()), "rss_model": peak_rss_bytes() - before,
            "peak_was_reset": reset, "threads": threads(impl)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dbnet.bench._worker", description=__doc__.splitlines()[0])
    p.add_argument("impl", choices=["dbnet", "torch"])
    p.add_argument("batch", type=int)
    p.add_argument("steps", type=int)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="the tiny model instead of the speech model")
    a = p.parse_args(argv)
    print(json.dumps(measure(a.impl, a.batch, a.steps, a.warmup, a.quick)), flush=True)


if __name__ == "__main__":
    main()
