"""The ceilings a training step is measured against: sgemm, memory bandwidth, update kernels."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dbnet.bench._common import SPEECH, TINY, median_seconds, median_seconds_each, n_params

F32 = np.float32


def _row(name: str, value: float, unit: str, note: str = "", **extra) -> dict:
    return {"name": name, "value": value, "unit": unit, "note": note, **extra}


def _rand(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).random(shape, dtype=F32)


def _sgemm(n: int):
    a, b, c = _rand(n, n), _rand(n, n), np.empty((n, n), F32)
    return lambda: np.matmul(a, b, out=c)


def sgemm_gflops(n: int, repeats: int, min_seconds: float = 0.2) -> float:
    """numpy float32 ``(n, n) @ (n, n)`` in GFLOP/s (2 n^3 flops), median of ``repeats``."""
    return 2 * n**3 / median_seconds(_sgemm(n), repeats, min_seconds) / 1e9


class _Copy:
    """``np.copyto`` of ``n`` float32; with ``threads > 1`` each thread copies one contiguous chunk."""

    def __init__(self, n: int, threads: int = 1):
        self.n, self.src, self.dst = n, _rand(n), np.empty(n, F32)
        cuts = [n * i // threads for i in range(threads + 1)]
        self.chunks = [slice(a, b) for a, b in zip(cuts, cuts[1:])]
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def __call__(self) -> None:
        if self.pool is None:
            np.copyto(self.dst, self.src)
        else:  # numpy releases the GIL while it copies
            for f in [self.pool.submit(np.copyto, self.dst[c], self.src[c]) for c in self.chunks]:
                f.result()

    def gbps(self, seconds: float) -> float:
        """GB/s for one copy in ``seconds``, counting bytes read plus bytes written (8 per element)."""
        return 8 * self.n / seconds / 1e9


def matmul(batches: list[int], repeats: int, quick: bool = False) -> list[dict]:
    """sgemm GFLOP/s: the 2048^3 ceiling and the speech model's layer products."""
    n, sizes, t = (256, TINY, 0.0) if quick else (2048, SPEECH, 0.2)
    names, flops, fns = [f"numpy {n}^3 (ceiling)"], [2 * n**3], [_sgemm(n)]
    # W and dW of each distinct layer shape, in order
    weights = {shape: (_rand(*shape), np.empty(shape, F32)) for shape in dict.fromkeys(zip(sizes, sizes[1:]))}
    for batch in batches:
        for (n_in, n_out), (w, dw) in weights.items():
            x, dz = _rand(batch, n_in), _rand(batch, n_out)
            y, dx = np.empty((batch, n_out), F32), np.empty((batch, n_in), F32)
            names += [f"fwd  {batch}x{n_in} @ {n_in}x{n_out}", f"dW   {n_in}x{batch} @ {batch}x{n_out}",
                      f"dx   {batch}x{n_out} @ {n_out}x{n_in}"]
            flops += [2 * batch * n_in * n_out] * 3
            # as dbnet.kernels.dense computes them: transposed views, no copies
            fns += [lambda x=x, w=w, y=y: np.matmul(x, w, out=y), lambda x=x, dz=dz, dw=dw: np.matmul(x.T, dz, out=dw),
                    lambda dz=dz, w=w, dx=dx: np.matmul(dz, w.T, out=dx)]
    try:
        import torch

        a, b, c = torch.rand(n, n), torch.rand(n, n), torch.empty(n, n)
        names.append(f"torch {n}^3 ({torch.get_num_threads()} threads)")
        flops.append(2 * n**3)
        fns.append(lambda: torch.mm(a, b, out=c))
    except ImportError:
        pass
    rates = [f / s / 1e9 for f, s in zip(flops, median_seconds_each(fns, repeats, t))]
    return [_row(name, r, "GFLOP/s", f"{r / rates[0]:.2f} of ceiling" if i else "all interleaved, medians")
            for i, (name, r) in enumerate(zip(names, rates))]


def memory(batches: list[int], repeats: int, quick: bool = False) -> list[dict]:
    """Memory bandwidth: np.copyto of an array the size of the speech model's parameters."""
    n = 1 << 20 if quick else n_params(SPEECH)
    threads = os.cpu_count() or 1
    one, all_ = _Copy(n), _Copy(n, threads)
    t_one, t_all = median_seconds_each([one, all_], repeats, 0.0 if quick else 0.2)
    size = f"{4 * n / 1e6:.0f} MB float32"
    return [_row(f"np.copyto {size}, 1 thread", one.gbps(t_one), "GB/s", "bytes read + bytes written (8 B per element)"),
            _row(f"np.copyto {size}, {threads} threads", all_.gbps(t_all), "GB/s", "the same, one chunk per thread"),
            _row(f"  {threads} threads, as memory traffic", all_.gbps(t_all) * 1.5, "GB/s", WRITE_ALLOCATE)]


WRITE_ALLOCATE = "12 B per element: the write-allocate read of each destination line too (no streaming stores)"
#: Bytes each update rule must move per parameter: reads w, g (+ state), writes w (+ state).
UPDATE_BYTES = {"sgd": 12, "momentum": 20, "adagrad": 20}


def update(batches: list[int], repeats: int, quick: bool = False) -> list[dict]:
    """Update-kernel rate in params/s against the bound from the copy rate measured in this run.

    The bound is the copy's memory traffic divided by the bytes a rule moves per
    parameter (:data:`UPDATE_BYTES`).  About 1 means the kernel runs at memory
    speed; a little above 1 happens, since the copy's traffic is an estimate.
    """
    import numba

    from dbnet.kernels import updates

    n = 1 << 20 if quick else n_params(SPEECH)
    w, g, v, acc = _rand(n), _rand(n) - F32(0.5), np.zeros(n, F32), np.zeros(n, F32)
    kernels = {
        "sgd": lambda: updates.sgd(w, g, 1e-6, 0.0),
        "momentum": lambda: updates.momentum(w, g, v, 1e-6, 0.9, False, 0.0),
        "adagrad": lambda: updates.adagrad(w, g, acc, 1e-6, 1e-8),
    }
    most = numba.get_num_threads()
    rows = []
    # 1 thread is what a parameter-server shard gets when it shares a node's cores with replicas.
    for threads in sorted({1, most}, reverse=True):
        numba.set_num_threads(threads)
        copy = _Copy(n, threads)  # as many copying threads as the kernels use
        seconds = median_seconds_each([copy, *kernels.values()], repeats, 0.0 if quick else 0.2)
        # np.copyto's writes first read each destination line (write-allocate): 12 B of traffic per
        # element, not 8.  The update kernels write only lines they have just read, so their
        # 12 or 20 B per parameter are their whole traffic.
        bandwidth = copy.gbps(seconds[0]) * 1.5e9
        rows.append(_row(f"np.copyto traffic, {threads} thread{'s' * (threads > 1)} (the bound)", bandwidth / 1e9,
                         "GB/s", WRITE_ALLOCATE))
        for (rule, fn), s in zip(kernels.items(), seconds[1:]):
            rate, bound = n / s, bandwidth / UPDATE_BYTES[rule]
            rows.append(_row(f"{rule} ({n / 1e6:.2f}M params), {threads} thread{'s' * (threads > 1)}", rate / 1e6,
                             "Mparam/s",
                             f"{rate / bound:.2f} of the bound {bound / 1e6:,.0f} Mparam/s ({UPDATE_BYTES[rule]} B/param)",
                             fraction_of_bound=rate / bound))
    numba.set_num_threads(most)
    return rows
