"""Downpour SGD and the parameter server under a real mpiexec (Open MPI and MPICH).

Every run has a hard timeout (tests/mpirun.py): a hang fails, it never blocks CI.
The world sizes used are 2, 3, 4 and 5 ranks (odd ones included) on 2 cores.
"""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from dbnet import checkpoint as ckpt_mod
from dbnet.rundir import RunDir
from mpirun import run_mpi

IMPLS = ["openmpi", "mpich"]


def write_cfg(tmp_path, h5, *, algorithm="downpour", shards=2, replicas=3, extra="", model="hidden = [32]"):
    out = tmp_path / "runs"
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / f"{algorithm}-{shards}x{replicas}.toml"
    cfg.write_text(f"""
[run]
out_dir = "{out}"
seed = 5
threads = 1
[data]
path = "{h5}"
[model]
{model}
[optimizer]
rule = "sgd"
lr = 0.05
[train]
algorithm = "{algorithm}"
batch_size = 32
eval_every_seconds = 0
eval_examples = 0  # the whole test set: floors without 2% of sampling noise
checkpoint_every_seconds = 0
[topology]
shards = {shards}
replicas = {replicas}
{extra}
""")
    return cfg


def only_run_dir(tmp_path):
    (d,) = list((tmp_path / "runs").iterdir())
    return RunDir(d)


def final_params(rd: RunDir) -> np.ndarray:
    return ckpt_mod.load(rd.latest_checkpoint()).params


def summary(rd: RunDir) -> dict:
    return json.loads(rd.summary_path.read_text())


@pytest.mark.parametrize("impl", IMPLS)
def test_wrong_rank_count_is_one_clear_error(tmp_path, fashion_mnist_h5, impl):
    cfg = write_cfg(tmp_path, fashion_mnist_h5, shards=2, replicas=3)
    r = run_mpi(4, ["train", str(cfg), "--set", "train.max_steps=10"], impl=impl, timeout=60)
    assert r.returncode != 0
    msg = "need 5 ranks (2 shards + 3 replicas x 1 partition), got 4: run mpiexec -n 5"
    assert r.stderr.count(msg) == 1, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("shards, impl, rule", [(1, "openmpi", "sgd"), (2, "openmpi", "sgd"), (3, "openmpi", "sgd"),
                                                (2, "mpich", "sgd"), (2, "openmpi", "adagrad"),
                                                (3, "mpich", "momentum")])
def test_one_replica_downpour_is_bit_identical_to_sgd(tmp_path, fashion_mnist_h5, shards, impl, rule):
    """1 replica, n_fetch = n_push = 1, alpha = 0, fetches that see the replica's own pushes (no
    overlap): exactly single-process training with the same update rule, whose state lives in the shards."""
    steps = ["--set", "train.max_steps=60", "--set", f"optimizer.rule='{rule}'"]
    sgd_cfg = write_cfg(tmp_path / "sgd", fashion_mnist_h5, algorithm="sgd", shards=1, replicas=1)
    # The reference runs in a fresh process too, so BLAS kernel choice and threads are the same.
    ref = subprocess.run([sys.executable, "-m", "dbnet", "train", str(sgd_cfg), *steps], capture_output=True,
                         text=True, timeout=120)
    assert ref.returncode == 0, ref.stderr
    sgd_rd = only_run_dir(tmp_path / "sgd")
    dp_cfg = write_cfg(tmp_path / "dp", fashion_mnist_h5, shards=shards, replicas=1,
                       extra="[comm]\noverlap = false\n[ps]\nread_own_writes = true\n")
    r = run_mpi(1 + shards, ["train", str(dp_cfg), *steps], impl=impl)
    assert r.returncode == 0, r.stderr
    rd = only_run_dir(tmp_path / "dp")
    assert summary(rd)["steps"] == summary(sgd_rd)["steps"] == 60
    assert np.array_equal(final_params(rd), final_params(sgd_rd))
    mine, ref = ckpt_mod.load(rd.latest_checkpoint()).optimizer, ckpt_mod.load(sgd_rd.latest_checkpoint()).optimizer
    assert mine.keys() == ref.keys() and all(np.array_equal(mine[k], ref[k]) for k in ref)  # Adagrad sums, velocity
    assert summary(rd)["shards"][0]["staleness_histogram"][0] == 60  # a lone replica is never stale


def test_downpour_adagrad_3_replicas_2_shards_reaches_85_percent(tmp_path, fashion_mnist_h5):
    cfg = write_cfg(tmp_path, fashion_mnist_h5, shards=2, replicas=3)
    r = run_mpi(5, ["train", str(cfg), "--set", "model.hidden=[512, 256]", "--set", "optimizer.rule='adagrad'",
                    "--set", "optimizer.lr=0.02", "--set", "train.max_epochs=8", "--set", "train.batch_size=64",
                    "--set", "train.target_accuracy=0.86", "--set", "train.eval_every_seconds=1",
                    "--set", "train.eval_examples=0", "--set", "downpour.warmstart_steps=50"], timeout=240)
    assert r.returncode == 0, r.stderr
    s = summary(only_run_dir(tmp_path))
    assert s["algorithm"] == "downpour" and s["final_test_accuracy"] >= 0.85, s["final_test_accuracy"]
    assert s["stopped_because"] == "reached target accuracy 0.86", (s["stopped_because"], s["best_test_accuracy"])
    assert s["examples_seen"] > 60000 and s["lost_replicas"] == []
    assert all(rep["steps"] > 0 and rep["pushes"] == rep["steps"] for rep in s["replicas"])
    assert sum(sh["updates_applied"] for sh in s["shards"]) == 2 * sum(rep["pushes"] for rep in s["replicas"])
    assert s["topology"] == {"shards": 2, "replicas": 3, "partitions": 1, "coordinator": False, "world_size": 5}


@pytest.mark.parametrize("impl", IMPLS)
def test_a_failed_replica_does_not_stop_the_others(tmp_path, fashion_mnist_h5, impl):
    cfg = write_cfg(tmp_path, fashion_mnist_h5, shards=1, replicas=3,
                    extra="[faults]\nfail_replica = 2\nfail_at_step = 2\n")
    r = run_mpi(4, ["train", str(cfg), "--set", "train.max_steps=600"], impl=impl)
    assert r.returncode == 0, r.stderr
    assert "lost replicas: [2]" in r.stdout
    s = summary(only_run_dir(tmp_path))
    assert s["lost_replicas"] == [2] and s["stopped_because"] == "reached 600 steps"
    failed = s["replicas"][2]
    assert failed["state"] == "failed" and failed["steps"] == 2 and "injected fault" in failed["error"]
    assert s["examples_seen"] >= 600 * 32 and s["final_test_accuracy"] > 0.65  # 0.75-0.76 (full test set); 0.64 seen on 500


def test_nan_gradient_is_rejected_not_applied(tmp_path, fashion_mnist_h5):
    cfg = write_cfg(tmp_path, fashion_mnist_h5, shards=3, replicas=2, extra="[faults]\nnan_replica = 1\nnan_at_step = 5\n")
    r = run_mpi(5, ["train", str(cfg), "--set", "train.max_steps=300", "--set", "train.eval_examples=0"])
    assert r.returncode == 0, r.stderr
    rd = only_run_dir(tmp_path)
    s = summary(rd)
    assert s["pushes_rejected"] == 3 and [sh["pushes_rejected"] for sh in s["shards"]] == [1, 1, 1]
    assert np.isfinite(final_params(rd)).all() and s["final_test_accuracy"] > 0.6  # runs reach 0.65-0.71


@pytest.mark.parametrize("crash_rank, role, impl", [(3, "shard 1", "openmpi"), (0, "replica 0", "openmpi"),
                                                     (3, "shard 1", "mpich"), (1, "replica 1", "mpich")])
def test_an_unhandled_error_on_one_rank_ends_the_job(tmp_path, fashion_mnist_h5, crash_rank, role, impl):
    """A crash after the windows exist: every other rank is blocked somewhere; the job must still end."""
    cfg = write_cfg(tmp_path, fashion_mnist_h5, shards=2, replicas=2, extra=f"[faults]\ncrash_rank = {crash_rank}\n")
    t0 = time.monotonic()
    r = run_mpi(4, ["train", str(cfg), "--set", "train.max_steps=100000"], impl=impl, timeout=90)
    assert r.returncode != 0
    assert f"unhandled error on rank {crash_rank} ({role})" in r.stderr and "injected crash" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 60  # promptly: far below downpour.timeout_seconds


def test_resume_continues_a_downpour_job(tmp_path, fashion_mnist_h5):
    cfg = write_cfg(tmp_path, fashion_mnist_h5, shards=2, replicas=2,
                    extra="[downpour]\nwarmstart_steps = 10\n")
    r = run_mpi(4, ["train", str(cfg), "--set", "train.max_steps=300", "--set", "train.checkpoint_every_steps=100"])
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("warmstart over after 10 steps") == 1
    rd = only_run_dir(tmp_path)
    first = ckpt_mod.load(rd.latest_checkpoint())
    steps = first.extra["replica_steps"]  # each replica's own step count: its position in its data shard
    assert steps.shape == (2,) and (steps > 0).all() and first.extra["warmstart_done"][0] == 1
    assert 32 * steps.sum() == first.loop.examples_seen
    # replicas stop themselves at the limit: the overshoot is a step or two per replica, not hundreds
    assert 300 * 32 <= first.loop.examples_seen <= (300 + 2 * 3) * 32
    r = run_mpi(4, ["train", "--resume", str(rd.path), "--set", "train.max_steps=600"])
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and "warmstart over" not in r.stderr  # warmstart is never run again
    s = summary(rd)
    last = ckpt_mod.load(rd.latest_checkpoint())
    assert 600 * 32 <= s["examples_seen"] <= (600 + 2 * 3) * 32 and s["final_test_accuracy"] > 0.65  # 0.69-0.80
    assert (last.extra["replica_steps"] > steps).all()  # both replicas went on from where they were
    assert 32 * last.extra["replica_steps"].sum() == last.loop.examples_seen
    assert sum(rep["examples_this_run"] for rep in s["replicas"]) == s["examples_seen"] - first.loop.examples_seen


def test_single_process_algorithm_refuses_mpi_and_vice_versa(tmp_path, fashion_mnist_h5):
    sgd_cfg = write_cfg(tmp_path, fashion_mnist_h5, algorithm="sgd")
    r = run_mpi(2, ["train", str(sgd_cfg), "--set", "train.max_steps=5"])
    assert r.returncode == 2 and r.stderr.count("runs in one process") == 1
    dp_cfg = write_cfg(tmp_path, fashion_mnist_h5)
    r = subprocess.run([sys.executable, "-m", "dbnet", "train", str(dp_cfg), "--set", "train.max_steps=5"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "runs under MPI on 5 ranks: dbnet launch" in r.stderr


@pytest.mark.parametrize("overlap", [False, True])
def test_n_fetch_n_push_and_local_steps(tmp_path, fashion_mnist_h5, overlap):
    cfg = write_cfg(tmp_path, fashion_mnist_h5, shards=2, replicas=2,
                    extra=f"[downpour]\nn_fetch = 3\nn_push = 2\nalpha = 0.01\n[comm]\noverlap = {str(overlap).lower()}\n")
    r = run_mpi(4, ["train", str(cfg), "--set", "train.max_steps=400"])
    assert r.returncode == 0, r.stderr
    s = summary(only_run_dir(tmp_path))
    for rep in s["replicas"]:
        assert rep["pushes"] in (rep["steps"] // 2, rep["steps"] // 2 + 1)  # + the accrued rest at the end
        fetch_steps = -(-rep["steps"] // 3)  # steps 0, 3, 6, ...; overlap may prefetch one more
        assert rep["fetches"] in ((fetch_steps, fetch_steps + 1) if overlap else (fetch_steps,))
        assert rep["overlap"] is overlap
    assert s["examples_seen"] == sum(rep["examples"] for rep in s["replicas"])  # nothing accrued was lost
    # runs reach 0.77-0.80 without overlap; with it, fetches 2 pushes stale and alpha steps: 0.43-0.58
    assert s["final_test_accuracy"] > (0.38 if overlap else 0.7)


def test_overlap_makes_a_lone_replica_exactly_one_or_more_updates_stale(tmp_path, fashion_mnist_h5):
    """With the communication thread, step t+1's parameters are fetched before step t's push:
    every push but the first is at least 1 stale, and the shard's histogram must say so."""
    cfg = write_cfg(tmp_path, fashion_mnist_h5, shards=1, replicas=1, extra="[comm]\noverlap = true\n")
    r = run_mpi(2, ["train", str(cfg), "--set", "train.max_steps=60"])
    assert r.returncode == 0, r.stderr
    s = summary(only_run_dir(tmp_path))
    hist = s["shards"][0]["staleness_histogram"]
    assert hist[0] == 1 and sum(hist) == s["replicas"][0]["pushes"] == s["steps"], hist
