"""Parameter-server and Downpour benchmarks (run under mpiexec in subprocesses).

* ``ps``: fetch + push bandwidth per replica for the speech model's 41.78M
  parameters, 1-3 replicas against 1 shard that applies every push (fixed-rate
  SGD, 12 B of memory traffic per parameter, or Adagrad, 20 B), against ``np.copyto`` of an array of the same size timed in each
  replica's own process (bytes copied per second; a fetch or push byte counts
  once, as a copied byte does).  Also the shard's update rate in params/s.
* ``downpour``: Downpour aggregate examples/s with R = 1..3 replicas (1
  shard), with and without the communication thread (``comm.overlap``),
  against single-process SGD on the same cores, on FSDD frames with the
  speech model's hidden layers, and the share of the training thread's time
  spent waiting on communication.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from dbnet.bench._common import SPEECH, TINY, n_params
from dbnet.launch import find_mpiexec, is_open_mpi


def _mpiexec(n: int) -> list[str]:
    exe = find_mpiexec()
    cmd = [exe, "-n", str(n)]
    if is_open_mpi(exe) and n > (os.cpu_count() or 1):
        cmd.append("--oversubscribe")
    return cmd


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run an mpiexec job in its own process group; on timeout kill mpiexec *and* its ranks."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:  # a timeout, or the caller interrupted: leave no rank behind
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _row(name, value, unit, note="", **extra):
    return {"name": name, "value": value, "unit": unit, "note": note, **extra}


def ps(batches: list[int], repeats: int, quick: bool = False) -> list[dict]:
    """Fetch + push bandwidth per replica vs a numpy copy of the same size; shard update rate."""
    n = n_params(TINY) if quick else n_params(SPEECH)
    seconds = 0.5 if quick else 6.0
    rows = []
    cases = ((1, "sgd"), (2, "adagrad")) if quick else ((1, "sgd"), (1, "adagrad"), (2, "adagrad"), (3, "adagrad"))
    for R, rule in cases:
        cmd = _mpiexec(R + 1) + [sys.executable, "-m", "dbnet.bench.ps_worker", str(n), str(seconds), "1", rule]
        out = _run(cmd, 300)
        label = f"{R} replica{'s' * (R > 1)}, {rule}"
        if out.returncode != 0:
            rows.append(_row(label, None, "", f"failed: {out.stderr.strip()[-300:]}"))
            continue
        d = json.loads(out.stdout.strip().splitlines()[-1])
        reps = [r for r in d["ranks"] if r["role"] == "replica"]
        (shard,) = [r for r in d["ranks"] if r["role"] == "shard"]
        ratios = [r["bytes_per_s"] / r["copy_bytes_per_s"] for r in reps]
        bw = sum(r["bytes_per_s"] for r in reps) / len(reps)
        copy = sum(r["copy_bytes_per_s"] for r in reps) / len(reps)
        extra = {"target": ">= 0.50", "pass": ratios[0] >= 0.5} if R == 1 else {}
        rows.append(_row(f"{label}: fetch+push per replica", bw / 1e9, "GB/s",
                         f"np.copyto {copy / 1e9:.2f} GB/s in the same processes; "
                         f"waiting for the shard {sum(r['wait_s'] for r in reps) / len(reps):.2f} s of {seconds:g} s"))
        rows.append(_row(f"{label}: fraction of copy rate", min(ratios), "",
                         "min over replicas" if R > 1 else "", **extra))
        rate = shard["updates"] * shard["n"] / shard["apply_seconds"] if shard["apply_seconds"] else 0.0
        rows.append(_row(f"{label}: shard update rate", rate / 1e6, "Mparam/s",
                         f"{shard['updates']} updates; applying {shard['apply_seconds'] / seconds:.0%} of the time"))
    return rows


def _config(tmp: Path, algorithm: str, replicas: int, quick: bool, overlap: bool = True) -> Path:
    hidden = "[64, 64]" if quick else "[2560, 2560, 2560, 2560]"
    seconds = 3 if quick else 30
    p = tmp / f"{algorithm}-{replicas}-{overlap}.toml"
    p.write_text(f"""
[run]
name = "bench-{algorithm}-{replicas}-{overlap}"
out_dir = "{tmp / 'runs'}"
[data]
dataset = "fsdd"
segments = 5
[model]
hidden = {hidden}
activation = "sigmoid"
[optimizer]
rule = "sgd"
lr = 0.05
[train]
algorithm = "{algorithm}"
batch_size = 256
max_seconds = {seconds}
eval_every_seconds = 0
eval_examples = 1024
checkpoint_every_seconds = 0
[topology]
shards = 1
replicas = {replicas}
[comm]
overlap = {str(overlap).lower()}
""")
    return p


def downpour(batches: list[int], repeats: int, quick: bool = False) -> list[dict]:
    """Downpour aggregate examples/s with 1-3 replicas vs single-process SGD on the same cores."""
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base = [sys.executable, "-m", "dbnet", "train", "--quiet"]
        out = _run(base + [str(_config(tmp, "sgd", 1, quick))], 600)
        if out.returncode != 0:
            return [_row("sgd", None, "", f"failed: {out.stderr.strip()[-300:]}")]
        (run,) = (tmp / "runs").glob("bench-sgd-*")
        sgd = json.loads((run / "summary.json").read_text())["examples_per_second"]
        rows.append(_row("single-process SGD", sgd, "ex/s", f"{os.cpu_count()} threads; {json.loads((run / 'summary.json').read_text())['model']}"))
        for R in (1, 2) if quick else (1, 2, 3):
            for overlap in (True,) if quick else (False, True):
                cfg = _config(tmp, "downpour", R, quick, overlap)
                label = f"downpour {R} replica{'s' * (R > 1)} + 1 shard, {'overlap' if overlap else 'sync'}"
                out = _run(_mpiexec(R + 1) + base + [str(cfg)], 600)
                if out.returncode != 0:
                    rows.append(_row(label, None, "", f"failed: {out.stderr.strip()[-300:]}"))
                    continue
                (run,) = (tmp / "runs").glob(f"bench-downpour-{R}-{overlap}-*")
                s = json.loads((run / "summary.json").read_text())
                exposed = sum(r["exposed_comm_seconds"] for r in s["replicas"])
                comm = sum(r["fetch_seconds"] + r["push_seconds"] for r in s["replicas"])
                wait = sum(r["wait_seconds"] for r in s["replicas"])
                busy = exposed + sum(r["compute_seconds"] for r in s["replicas"])
                rows.append(_row(label, s["examples_per_second"], "ex/s",
                                 f"{s['examples_per_second'] / sgd:.2f} x SGD; training thread waits on communication "
                                 f"{exposed / busy:.0%} of its time (fetch+push take {comm / busy:.0%}, of it waiting "
                                 f"for the shard {wait / busy:.0%}); {R + 1} ranks on {os.cpu_count()} cores"))
    return rows
