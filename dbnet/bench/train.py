"""Single-process training throughput of the speech model: dbnet against PyTorch.

Every measurement runs in a fresh worker process (:mod:`dbnet.bench._worker`)
so each implementation's peak RSS is its own; dbnet and PyTorch runs
alternate so machine noise hits both, and the matmul ceiling is measured
between them.  A run's rate is ``batch / median step time`` (after 3 warm-up
steps); reported values are medians over the runs.

PyTorch runs in the environment the user started with, without dbnet's
tuning: its GEMMs are MKL's, which ``OPENBLAS_CORETYPE`` does not touch, and
``OMP_WAIT_POLICY=passive`` made no measurable difference to it here.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from dbnet.bench._common import original_env
from dbnet.bench.micro import sgemm_gflops

TORCH_MISSING = "torch not installed: pip install torch==2.13.0 or pip install -e '.[bench]'"
TARGET_RATIO = 1.5  # dbnet examples/s over PyTorch's
TARGET_CEILING = 0.60  # dbnet's FLOP rate over numpy's 2048^3 sgemm
MB = 1e6


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def torch_env() -> dict[str, str]:
    """PyTorch runs in the environment the user started with: none of dbnet's tuning."""
    env = dict(os.environ, DBNET_TUNE="0")
    start = original_env()
    for key in ("OPENBLAS_CORETYPE", "OMP_WAIT_POLICY"):
        env.pop(key, None)
        if key in start:
            env[key] = start[key]
    return env


def run_worker(impl: str, batch: int, steps: int, warmup: int, quick: bool) -> dict:
    cmd = [sys.executable, "-m", "dbnet.bench._worker", impl, str(batch), str(steps), "--warmup", str(warmup)]
    env = torch_env() if impl == "torch" else None
    out = subprocess.run(cmd + ["--quick"] * quick, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _verdict(name: str, value: float, unit: str, target: str, ok: bool, note: str = "") -> dict:
    return {"name": name, "value": value, "unit": unit, "target": target, "pass": ok, "note": note}


def train(batches: list[int], repeats: int, quick: bool = False) -> list[dict]:
    """dbnet vs PyTorch examples/s, FLOP rate vs the sgemm ceiling, peak RSS."""
    impls = ["dbnet", "torch"] if torch_available() else ["dbnet"]
    warmup = 1 if quick else 3
    runs: dict[tuple[str, int], list[dict]] = {(i, b): [] for i in impls for b in batches}
    ceiling = []
    for rep in range(repeats):
        ceiling.append(sgemm_gflops(256 if quick else 2048, 3, 0.0 if quick else 0.1))
        for batch in batches:
            steps = 2 if quick else max(5, 2560 // batch)
            for impl in impls if rep % 2 == 0 else impls[::-1]:  # alternate who goes first
                if sys.stderr.isatty():
                    print(f"  train: repeat {rep + 1}/{repeats}, {impl} batch {batch}   ", end="\r", file=sys.stderr)
                runs[impl, batch].append(run_worker(impl, batch, steps, warmup, quick))
    ceiling_gflops = statistics.median(ceiling)
    rows = [{"name": f"numpy {256 if quick else 2048}^3 sgemm (ceiling)", "value": ceiling_gflops, "unit": "GFLOP/s",
             "note": f"median of {len(ceiling)}, between the runs"}]

    def summary(impl: str, batch: int) -> dict:
        rs = runs[impl, batch]
        rates = [batch / statistics.median(r["step_seconds"]) for r in rs]  # robust to noisy steps
        return {"rate": statistics.median(rates), "lo": min(rates), "hi": max(rates), "n_params": rs[0]["n_params"],
                "peak": statistics.median(r["rss_peak"] for r in rs),
                "model": statistics.median(r["rss_model"] for r in rs), "threads": rs[0]["threads"]}

    for batch in batches:
        s = {impl: summary(impl, batch) for impl in impls}
        for impl, v in s.items():
            rows.append({"name": f"{impl:5s} batch {batch}", "value": v["rate"], "unit": "ex/s",
                         "note": f"range {v['lo']:,.0f}-{v['hi']:,.0f}; {v['threads']} threads"})
        d = s["dbnet"]
        flops = 6 * d["n_params"] * d["rate"] / 1e9
        if "torch" in s:
            t = s["torch"]
            ratio = d["rate"] / t["rate"]
            rows.append(_verdict(f"dbnet/torch batch {batch}", ratio, "x", f">= {TARGET_RATIO}", ratio >= TARGET_RATIO))
        rows.append(_verdict(f"dbnet FLOP rate batch {batch}", flops / ceiling_gflops, "of ceiling", f">= {TARGET_CEILING:.2f}",
                             flops / ceiling_gflops >= TARGET_CEILING,
                             f"{flops:,.0f} GFLOP/s = 6 x {d['n_params'] / 1e6:.2f}M params x ex/s / 1e9"))
        if "torch" in s:
            rows.append(_verdict(f"peak RSS batch {batch}: dbnet", d["peak"] / MB, "MB", "<= torch", d["peak"] <= t["peak"],
                                 f"model's own {d['model'] / MB:,.0f} MB"))
            rows.append({"name": f"peak RSS batch {batch}: torch", "value": t["peak"] / MB, "unit": "MB",
                         "note": f"model's own {t['model'] / MB:,.0f} MB"})
        else:
            rows.append({"name": f"peak RSS batch {batch}: dbnet", "value": d["peak"] / MB, "unit": "MB",
                         "note": f"model's own {d['model'] / MB:,.0f} MB"})
    if "torch" not in impls:
        rows.append({"name": "torch", "value": None, "unit": "", "note": TORCH_MISSING})
    return rows
