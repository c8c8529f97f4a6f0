"""The fault-injection harness (``dbnet chaos``) in small: one fault of each kind under Open MPI, a kill under MPICH.

Each case runs ``python -m dbnet.chaos`` on a 4-rank Downpour job (2 shards,
2 replicas, warmstart 50 steps, so a checkpoint exists from the start) and
checks its ``chaos.json``: no hang, no orphaned process, the SIGSTOPped rank's
job completed, the killed job resumed from its checkpoint.  The seeds are
chosen for coverage: seed 7 kills replica 1, stops the lead for 6 s and
fails the lead's replica at its step 253; under MPICH seed 8 kills shard 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dbnet.chaos import Fault, markdown, plan, totals
from mpirun import mpiexec_for

REPO = Path(__file__).resolve().parents[1]


def write_cfg(tmp_path: Path, h5: Path) -> Path:
    cfg = tmp_path / "chaos.toml"
    cfg.write_text(f"""
[run]
name = "chaos"
seed = 5
threads = 1
[data]
path = "{h5}"
[model]
hidden = [32]
[optimizer]
rule = "adagrad"
lr = 0.02
[train]
algorithm = "downpour"
batch_size = 32
max_seconds = 10
eval_examples = 500
[topology]
shards = 2
replicas = 2
[downpour]
warmstart_steps = 50
""")
    return cfg


def run_chaos(tmp_path: Path, h5: Path, impl: str, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    """``python -m dbnet.chaos`` with a hard timeout; on timeout SIGTERM (chaos then kills its job), then SIGKILL."""
    _, env = mpiexec_for(impl)  # skips (or fails under make test) when MPICH is missing
    env.pop("MPI4PY_LIBMPI", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    out = tmp_path / "chaos"
    cmd = [sys.executable, "-m", "dbnet.chaos", str(write_cfg(tmp_path, h5)), "--impl", impl, "--seconds", "10",
           "--out", str(out), *args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         start_new_session=True)
    try:
        text, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        try:
            text, _ = p.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            text, _ = p.communicate()
        pytest.fail(f"dbnet chaos took more than {timeout} s:\n{text}")
    report = json.loads((out / "chaos.json").read_text()) if (out / "chaos.json").exists() else {}
    assert report, text
    assert (out / "chaos.md").read_text().count("\n| ") == len(report["runs"]) + 1  # header + one row per run
    return subprocess.CompletedProcess(cmd, p.returncode, text), report


def check_no_hang_no_orphan(report: dict, text: str) -> None:
    t = report["totals"]
    assert t["hangs"] == 0 and t["orphans"] == 0, text
    for r in report["runs"]:
        assert r["fired"], (r, text)
        assert not r["hang"] and r["orphans"] == [], (r, text)


def check_kill(r: dict, text: str) -> None:
    assert r["kind"] == "kill" and r["exit_status"] != 0 and not r["survived"], (r, text)
    assert r["seconds_to_exit"] < 15, (r, text)
    assert r["resume"]["finished"] and r["resume"]["orphans"] == [], (r, text)
    assert r["checkpoint"]["examples_seen"] > 0 and r["examples_lost"] is not None and r["seconds_lost"] < 10, (r, text)


@pytest.mark.timeout(170)
def test_one_fault_of_each_kind_open_mpi(tmp_path, fashion_mnist_h5):
    r, report = run_chaos(tmp_path, fashion_mnist_h5, "openmpi", "--runs", "3", "--seed", "7", timeout=150)
    assert r.returncode == 0, r.stdout
    check_no_hang_no_orphan(report, r.stdout)
    kill, stop, fail = report["runs"]
    check_kill(kill, r.stdout)
    assert stop["kind"] == "stop" and stop["survived"] and stop["exit_status"] == 0, (stop, r.stdout)
    assert "lead" in stop["target_role"], stop  # seed 7 stops the lead: evaluations and the stop wait for it
    assert fail["plan"]["flavour"] == "fail_replica" and fail["survived"], (fail, r.stdout)
    t = report["totals"]
    assert (t["runs"], t["stops_survived"], t["died"], t["resumed"]) == (3, 1, 1, 1), t


@pytest.mark.timeout(80)
def test_a_killed_rank_under_mpich(tmp_path, fashion_mnist_h5):
    r, report = run_chaos(tmp_path, fashion_mnist_h5, "mpich", "--runs", "1", "--seed", "8", "--kinds", "kill",
                          timeout=70)
    assert r.returncode == 0, r.stdout
    check_no_hang_no_orphan(report, r.stdout)
    (kill,) = report["runs"]
    assert kill["target_role"] == "shard", kill
    check_kill(kill, r.stdout)


def test_plan_is_deterministic_and_takes_kinds_in_turn():
    a = plan(3, 7, ("kill", "stop", "raise"), replicas=3, world=5)
    assert a == plan(3, 7, ("kill", "stop", "raise"), replicas=3, world=5)
    assert a != plan(4, 7, ("kill", "stop", "raise"), replicas=3, world=5)
    assert [f.kind for f in a] == ["kill", "stop", "raise"] * 2 + ["kill"]
    for f in a:
        assert 0 <= f.rank < 5 and (f.kind == "raise" or 1 <= f.delay <= 6)
        if f.kind == "stop":
            assert 5 <= f.stop_seconds <= 20
        if f.kind == "raise":
            assert f.flavour in ("fail_replica", "crash_rank") and 100 <= f.step <= 3000
            assert f.flavour == "crash_rank" or f.rank < 3  # fail_replica names a replica


def test_totals_and_table_count_failures():
    ok = {"run": 0, "kind": "stop", "fault": "SIGSTOP 6 s", "target_rank": 1, "target_role": "shard", "fired": True,
          "fault_at": 3.0, "exit_status": 0, "seconds_to_exit": 8.0, "hang": False, "orphans": [], "survived": True,
          "rate_before_stop": 1000, "rate_during_stop": 950}
    died = {**ok, "run": 1, "kind": "kill", "fault": "SIGKILL", "exit_status": 137, "survived": False,
            "rate_before_stop": None, "rate_during_stop": None,
            "examples_lost": 1000, "seconds_lost": 1.5, "resume": {"finished": False, "exit_status": 1, "orphans": [{"pid": 9}]}}
    t = totals([ok, died])
    assert (t["runs"], t["hangs"], t["orphans"], t["stops_survived"], t["died"], t["resumed"]) == (2, 0, 1, 1, 1, 0)
    assert t["max_examples_lost"] == 1000 and t["max_seconds_lost"] == 1.5
    md = markdown([ok, died], t, "head")
    assert "| 1 | SIGKILL | rank 1 shard | 3.0 | 137 | 8.0 | no | 1 | FAILED (1) | 1,000 | 1.5 | - |" in md, md
    assert "| 0 | SIGSTOP 6 s | rank 1 shard | 3.0 | 0 | 8.0 | no | 0 | - | - | - | 95% |" in md, md
    assert "2 runs: 0 hangs, 1 orphans, stops survived 1/1, died and resumed 0/1" in md
    assert Fault("raise", 0.0, 2, flavour="crash_rank", step=40).describe() == "crash_rank @40"


@pytest.mark.timeout(30)
def test_a_process_left_behind_is_reported_and_killed(tmp_path):
    from dbnet.chaos import Job
    from dbnet.launch import start_time

    job = Job(["bash", "-c", "sleep 60 & echo examples 5; sleep 1"], dict(os.environ), tmp_path / "log", tmp_path)
    while job.poll() is None:
        pass
    assert job.proc.returncode == 0 and job.examples_before(job.now()) == 5
    (sleeper,) = [pid for pid in job.seen if start_time(pid) is not None]
    orphans = job.orphans({})
    assert [o["pid"] for o in orphans] == [sleeper] and orphans[0]["cmdline"] == "sleep 60"
    assert start_time(sleeper) is None
