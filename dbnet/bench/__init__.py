"""Benchmarks: ``python -m dbnet.bench [NAME ...]`` or ``dbnet bench [NAME ...]``.

Benchmarks are not tests: they print a header naming the machine, versions
and BLAS settings, and report ratios measured in the same run (dbnet against
PyTorch, the update kernels against the copy rate), because absolute times on
shared machines drift.  Each benchmark is a function
``(batches, repeats, quick) -> list of result dicts`` with the keys ``name``,
``value``, ``unit``, ``note`` and, where there is a target, ``target`` and
``pass``.
"""

from __future__ import annotations

import os
import platform

import dbnet
from dbnet.bench._common import original_env
from dbnet.bench.local import lc
from dbnet.bench.micro import matmul, memory, update
from dbnet.bench.mp import mp
from dbnet.bench.ps import downpour, ps
from dbnet.bench.train import TORCH_MISSING, train

#: name -> benchmark; ``python -m dbnet.bench`` runs them all, in this order.
BENCHMARKS = {"train": train, "matmul": matmul, "memory": memory, "update": update, "ps": ps, "downpour": downpour,
              "lc": lc, "mp": mp}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header() -> dict[str, str]:
    """Machine, versions, BLAS kernel and the tuning dbnet applied, as display strings."""
    import numba
    import numpy

    from dbnet import _tuning

    avx512 = "AVX-512" if _tuning._AVX512 <= _tuning.cpu_flags() else "no AVX-512"
    h = {
        "machine": f"{_cpu_model()}, {os.cpu_count()} logical CPUs, {avx512}; {platform.node()}",
        "versions": f"dbnet {dbnet.__version__}, python {platform.python_version()}, numpy {numpy.__version__}, "
                    f"numba {numba.__version__} ({numba.config.NUMBA_NUM_THREADS} threads)",
    }
    try:
        import torch

        blas = "MKL" if torch.backends.mkl.is_available() else "no MKL"
        h["versions"] += f", torch {torch.__version__} ({torch.get_num_threads()} threads, {blas})"
    except ImportError:
        h["versions"] += f"; {TORCH_MISSING}"
    start = original_env().get("OPENBLAS_CORETYPE", "unset")
    h["blas"] = f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')} (environment had {start})"
    try:
        from threadpoolctl import threadpool_info

        for p in threadpool_info():
            if p["user_api"] == "blas":
                kernel = p.get("architecture", "?")
                h["blas"] += f"; {p['internal_api']} {p['version']} kernel {kernel}, {p['num_threads']} threads"
    except ImportError:
        h["blas"] += "; (pip install threadpoolctl to show the kernel in use)"
    h["dbnet tuning"] = "; ".join(_tuning.applied) or "none (DBNET_TUNE=0 or already set)"
    h["load"] = load()
    return h


def load() -> str:
    """The machine's load average: above ~0.1, other processes compete with the benchmark."""
    try:
        return "%.2f %.2f %.2f (1, 5, 15 min)" % os.getloadavg()
    except OSError:
        return "unknown"


def format_header(h: dict[str, str]) -> str:
    width = max(map(len, h))
    return "\n".join(f"{k:<{width}}  {v}" for k, v in h.items())


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"


def format_table(rows: list[dict]) -> str:
    """Rows as aligned text: name, value, unit, target, PASS/MISS, note."""
    cells = [(r["name"], _fmt(r["value"]), r["unit"], r.get("target", ""),
              {True: "PASS", False: "MISS"}.get(r.get("pass"), ""), r.get("note", "")) for r in rows]
    w = [max(len(c[i]) for c in cells) for i in range(5)]
    return "\n".join(f"  {a:<{w[0]}}  {b:>{w[1]}} {c:<{w[2]}}  {d:<{w[3]}}  {e:<{w[4]}}  {f}".rstrip()
                     for a, b, c, d, e, f in cells)
