"""Locally connected layer, forward + backward: dbnet's kernels against plain numpy and PyTorch.

The shape is the one DistBelief-style image models use (and the one PyTorch's
usual LC is slow on): input (32, 3, 100, 100), 10x10 patches, stride 1, 8 maps,
so 91x91 positions and 19.9M untied weights; then Fashion-MNIST's first LC
layer.  One step is forward (sigmoid), dz, dW, db and dx.  The three run
alternately in this process with the same number of threads (numba's),
medians over ``repeats``; ratios are what to read, since absolute times on a
shared machine drift.

* numpy: im2col into one (positions, batch, k*k*C) buffer and batched
  ``np.matmul`` (per position: forward, dW and the patch gradient; no col2im).
* PyTorch: ``F.unfold`` + ``einsum`` on NCHW, autograd backward.

FLOPs: ``2 * batch * Ho * Wo * k*k*C_in * C_out`` per pass, three passes.
The ceiling is numpy's 2048^3 sgemm, measured in the same run.
"""

from __future__ import annotations

import numpy as np

from dbnet.bench._common import median_seconds_each
from dbnet.bench.micro import sgemm_gflops

F32 = np.float32
TARGET_NUMPY = 2.0  # dbnet's speed over plain numpy's
TARGET_TORCH = 20.0  # dbnet's speed over PyTorch's unfold + einsum
#: (name, batch, H, W, C_in, k, stride, C_out)
SHAPES = [("100x100x3 k10 8 maps", 32, 100, 100, 3, 10, 1, 8), ("28x28x1 k5 16 maps", 64, 28, 28, 1, 5, 1, 16)]
QUICK = [("20x20x3 k5 8 maps", 4, 20, 20, 3, 5, 1, 8)]


class Problem:
    """One LC layer's data; each implementation gets the same x, w, b, dy."""

    def __init__(self, B, H, W, C, k, s, M):
        from dbnet.kernels import output_size

        rng = np.random.default_rng(0)
        self.B, self.H, self.W, self.C, self.k, self.s, self.M = B, H, W, C, k, s, M
        self.Ho, self.Wo = output_size(H, k, s), output_size(W, k, s)
        self.P = k * k * C
        self.x = rng.standard_normal((B, H, W, C), dtype=F32)
        self.w = rng.standard_normal((self.Ho, self.Wo, k, k, C, M), dtype=F32) * F32(self.P ** -0.5)
        self.b = rng.standard_normal((self.Ho, self.Wo, M), dtype=F32) * F32(0.1)
        self.dy = rng.standard_normal((B, self.Ho, self.Wo, M), dtype=F32)

    @property
    def flops(self) -> int:
        """Forward, dW and dx: three (batch x P) (P x M)-sized products per position."""
        return 3 * 2 * self.B * self.Ho * self.Wo * self.P * self.M


class Dbnet:
    def __init__(self, p: Problem):
        self.p = p
        self.y, self.dz = np.empty_like(p.dy), np.empty_like(p.dy)
        self.dw, self.db, self.dx = np.empty_like(p.w), np.empty_like(p.b), np.empty_like(p.x)

    def __call__(self) -> None:
        from dbnet.kernels import lc_backward, lc_forward

        p = self.p
        lc_forward(p.x, p.w, p.b, self.y, p.k, p.s, "sigmoid")
        np.copyto(self.dz, p.dy)  # lc_backward turns dy into dz in place
        lc_backward(p.x, p.w, self.y, self.dz, self.dw, self.db, self.dx, p.k, p.s, "sigmoid")


class Numpy:
    """im2col + batched matmul, position-major: (L, B, P) @ (L, P, M)."""

    def __init__(self, p: Problem):
        from dbnet.kernels.reference import patches

        self.p, self.patches = p, patches
        L = p.Ho * p.Wo
        self.cols = np.empty((p.Ho, p.Wo, p.B, p.k, p.k, p.C), F32)
        self.w = p.w.reshape(L, p.P, p.M)
        self.y, self.dz = np.empty((L, p.B, p.M), F32), np.empty((L, p.B, p.M), F32)
        self.dy = np.ascontiguousarray(p.dy.reshape(p.B, L, p.M).transpose(1, 0, 2))
        self.dw, self.dcols = np.empty((L, p.P, p.M), F32), np.empty((L, p.B, p.P), F32)
        self.db = np.empty((L, p.M), F32)

    def __call__(self) -> None:
        p = self.p
        np.copyto(self.cols, self.patches(p.x, p.k, p.s).transpose(1, 2, 0, 3, 4, 5))
        cols = self.cols.reshape(p.Ho * p.Wo, p.B, p.P)
        np.matmul(cols, self.w, out=self.y)
        self.y += p.b.reshape(-1, 1, p.M)
        np.negative(self.y, out=self.y)
        np.exp(self.y, out=self.y)
        self.y += 1
        np.reciprocal(self.y, out=self.y)
        np.subtract(1, self.y, out=self.dz)
        self.dz *= self.y
        self.dz *= self.dy
        np.matmul(cols.transpose(0, 2, 1), self.dz, out=self.dw)
        self.dz.sum(axis=1, out=self.db)
        np.matmul(self.dz, self.w.transpose(0, 2, 1), out=self.dcols)


class Torch:
    """PyTorch's usual LC: unfold to (B, C*k*k, L), einsum with (L, C*k*k, M)."""

    def __init__(self, p: Problem):
        import torch

        self.torch, self.F, self.p = torch, torch.nn.functional, p
        L = p.Ho * p.Wo
        self.x = torch.from_numpy(p.x.transpose(0, 3, 1, 2).copy()).requires_grad_()
        w = p.w.reshape(L, p.k, p.k, p.C, p.M).transpose(0, 3, 1, 2, 4).reshape(L, p.P, p.M)  # (c, di, dj) order
        self.w = torch.from_numpy(np.ascontiguousarray(w)).requires_grad_()
        self.b = torch.from_numpy(p.b.reshape(L, p.M).copy()).requires_grad_()
        self.dy = torch.from_numpy(p.dy.reshape(p.B, L, p.M).copy())
        self.y = None

    def __call__(self) -> None:
        for t in (self.x, self.w, self.b):
            t.grad = None
        cols = self.F.unfold(self.x, self.p.k, stride=self.p.s)
        self.y = self.torch.sigmoid(self.torch.einsum("bpl,lpm->blm", cols, self.w) + self.b)
        self.y.backward(self.dy)

    def max_difference(self, d: Dbnet) -> float:
        """Largest |dbnet - torch| over y, dW and dx, relative to each one's largest magnitude."""
        p = self.p
        self()
        pairs = [(d.y, self.y.detach().numpy().reshape(d.y.shape)),
                 (d.dw, self.w.grad.numpy().reshape(p.Ho, p.Wo, p.C, p.k, p.k, p.M).transpose(0, 1, 3, 4, 2, 5)),
                 (d.db, self.b.grad.numpy().reshape(d.db.shape)),
                 (d.dx, self.x.grad.numpy().transpose(0, 2, 3, 1))]
        return max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in pairs)


def _row(name, value, unit, note="", **extra) -> dict:
    return {"name": name, "value": value, "unit": unit, "note": note, **extra}


def lc(batches: list[int], repeats: int, quick: bool = False) -> list[dict]:
    """LC fwd+bwd ms for dbnet, numpy and PyTorch; ratios with targets; GFLOP/s against sgemm.

    ``batches`` is ignored: the shapes (and their batch sizes) are fixed, see :data:`SHAPES`.
    """
    import numba

    threads = numba.get_num_threads()
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        torch = None
    t = 0.0 if quick else 0.2
    ceiling = sgemm_gflops(256 if quick else 2048, repeats, t)
    rows = [_row(f"numpy {256 if quick else 2048}^3 sgemm (ceiling)", ceiling, "GFLOP/s",
                 f"{threads} threads for numba, BLAS and torch")]
    for si, (name, *dims) in enumerate(QUICK if quick else SHAPES):
        p = Problem(*dims)
        impls = {"dbnet": Dbnet(p), "numpy": Numpy(p)}
        if torch is not None:
            impls["torch"] = Torch(p)
        ms = dict(zip(impls, (1e3 * s for s in median_seconds_each(list(impls.values()), repeats, t))))
        gflops = {k: p.flops / v / 1e6 for k, v in ms.items()}
        shape = f"({p.B}, {p.H}, {p.W}, {p.C}) -> ({p.Ho}x{p.Wo}x{p.M}), {p.w.size / 1e6:.1f}M weights"
        for impl, v in ms.items():
            note = f"{gflops[impl]:.1f} GFLOP/s, {gflops[impl] / ceiling:.3f} of sgemm"
            rows.append(_row(f"{name}: {impl} fwd+bwd", v, "ms", note + (f"; {shape}" if impl == "dbnet" else "")))
        main = si == 0 and not quick
        for impl, target in (("numpy", TARGET_NUMPY), ("torch", TARGET_TORCH)):
            if impl in ms:
                ratio = ms[impl] / ms["dbnet"]
                extra = dict(target=f">= {target:g}", **{"pass": ratio >= target}) if main else {}
                rows.append(_row(f"{name}: dbnet speed-up over {impl}", ratio, "x", "same run, medians", **extra))
        if "torch" in impls:
            diff = impls["torch"].max_difference(impls["dbnet"])
            rows.append(_row(f"{name}: max |dbnet - torch| / max |torch|", diff, "", f"{diff:.1e}; y, dW, db, dx",
                             target="<= 1e-4", **{"pass": diff <= 1e-4}))
    return rows
