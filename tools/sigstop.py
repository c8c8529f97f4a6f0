#!/usr/bin/env python3
"""Measure what a SIGSTOPped replica costs the others (issue 6: at most 10% of their throughput).

Runs the demo config (3 replicas + 2 shards) for ``--seconds``; once training
has started (the lead's first checkpoint exists) it waits ``--at`` seconds,
SIGSTOPs replica ``--victim`` for ``--stop`` seconds, then SIGCONTs it.
From the summary's ``replica_steps_timeline`` (each replica's step at every
evaluation) it computes, for every other replica, its steps per second
while the victim was stopped divided by its rate from the start of training
to the stop, and counts the evaluations made during the stop.  Prints one
Markdown row per run and the median ratio per MPI library.

    python tools/sigstop.py --runs 3 --impl openmpi --impl mpich
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"


def launch_env(impl: str) -> tuple[list[str], dict]:
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if impl == "mpich":
        mv = Path(os.environ.get("DBNET_MPICH_VENV", REPO / ".venv-mpich"))
        env["MPI4PY_LIBMPI"] = str(mv / "lib" / "libmpi.so.12")
        return [str(mv / "bin" / "mpiexec")], env
    env.pop("MPI4PY_LIBMPI", None)
    return [str(VENV / "bin" / "mpiexec"), "--oversubscribe"], env


def one_run(impl: str, seconds: float, at: float, stop: float, victim: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="sigstop-"))
    mpiexec, env = launch_env(impl)
    cmd = [*mpiexec, "-n", "5", str(VENV / "bin" / "python"), "-m", "dbnet", "train",
           str(REPO / "experiments" / "fashion_downpour.toml"), "--set", f"run.out_dir='{out}'",
           "--set", f"train.max_seconds={seconds}", "--set", "train.max_epochs=1000",
           "--set", "train.checkpoint_every_seconds=5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not glob.glob(f"{out}/*/checkpoints/ckpt-*.h5"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("training never started")
            time.sleep(0.1)
        ranks = json.loads(next(out.glob("*/ranks.json")).read_text())
        pid = next(r["pid"] for r in ranks if r["role"] == "replica" and r["replica_id"] == victim)
        time.sleep(at)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(stop)
        os.kill(pid, signal.SIGCONT)
        log, _ = proc.communicate(timeout=seconds + 120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}:\n{log[-2000:]}")
    s = json.loads(next(out.glob("*/summary.json")).read_text())
    tl = s["replica_steps_timeline"]
    col = 1 + victim
    runs, start = [], 0
    for i in range(1, len(tl) + 1):
        if i == len(tl) or tl[i][col] != tl[start][col]:
            runs.append((tl[start][0], tl[min(i, len(tl) - 1)][0]))
            start = i
    t_stop, t_cont = max(runs, key=lambda r: r[1] - r[0])
    t_train = next(row[0] for row in tl if row[1] > 0)

    def rate(rep: int, t0: float, t1: float) -> float:
        rows = [row for row in tl if t0 <= row[0] <= t1]
        return (rows[-1][1 + rep] - rows[0][1 + rep]) / (rows[-1][0] - rows[0][0])

    others = [rep for rep in range(len(tl[0]) - 1) if rep != victim]
    ratios = {rep: rate(rep, t_stop, t_cont) / rate(rep, t_train, t_stop) for rep in others}
    return {"impl": impl, "stopped_s": t_cont - t_stop, "ratios": ratios,
            "evals_during": sum(1 for row in tl if t_stop < row[0] < t_cont),
            "victim_after": rate(victim, t_cont, tl[-1][0]) > 0, "stopped_because": s["stopped_because"],
            "accuracy": s["final_test_accuracy"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--impl", action="append", choices=["openmpi", "mpich"])
    ap.add_argument("--seconds", type=float, default=45)
    ap.add_argument("--at", type=float, default=8)
    ap.add_argument("--stop", type=float, default=20)
    ap.add_argument("--victim", type=int, default=2)
    a = ap.parse_args()
    print("| MPI | run | stopped (s) | others' rate while stopped / before | evaluations during the stop | "
          "victim trained again | final accuracy |")
    print("|---|---|---|---|---|---|---|")
    worst = {}
    for impl in a.impl or ["openmpi"]:
        for i in range(a.runs):
            r = one_run(impl, a.seconds, a.at, a.stop, a.victim)
            worst.setdefault(impl, []).append(min(r["ratios"].values()))
            rs = ", ".join(f"replica {k}: {v:.2f}" for k, v in r["ratios"].items())
            print(f"| {impl} | {i} | {r['stopped_s']:.1f} | {rs} | {r['evals_during']} | "
                  f"{'yes' if r['victim_after'] else 'NO'} | {100 * r['accuracy']:.2f}% |", flush=True)
    for impl, w in worst.items():
        print(f"\n{impl}: median over runs of the slower other replica's ratio: {statistics.median(w):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
