"""Model parallelism end to end under a real mpiexec: SGD on P partitions, Downpour R x P x S, resume with
another P.  (Kernel-level agreement of P partitions with the whole network: tests/test_partitions.py.)"""

import subprocess
import sys

import numpy as np
import pytest

from dbnet import checkpoint as ckpt_mod
from mpirun import run_mpi
from test_downpour import only_run_dir, summary, write_cfg

LC = 'features = ["local 5 4", "maxpool 2", "local 5 8", "maxpool 2"]\nhidden = []'


def _sgd(tmp_path, h5, partitions, steps, impl="openmpi", extra_args=()):
    cfg = write_cfg(tmp_path, h5, algorithm="sgd", shards=1, replicas=1, model=LC,
                    extra=f"partitions = {partitions}\n")
    args = ["train", str(cfg), "--set", f"train.max_steps={steps}", *extra_args]
    if partitions == 1:  # the reference runs in a fresh process too: same BLAS kernel choice and threads
        r = subprocess.run([sys.executable, "-m", "dbnet", *args], capture_output=True, text=True, timeout=180)
    else:
        r = run_mpi(partitions, args, impl=impl, timeout=180)
    assert r.returncode == 0, r.stderr
    return only_run_dir(tmp_path)


@pytest.mark.parametrize("P, impl", [(2, "openmpi"), (3, "mpich")])
def test_sgd_on_partitions_follows_one_process(tmp_path, fashion_mnist_h5, P, impl):
    """40 steps of momentum SGD: the parameters of P partitions stay within float rounding of one process's
    (the dense split and the halo gradients sum in another order; measured drift ~1e-6 of the largest)."""
    extra = ("--set", "optimizer.rule='momentum'")
    one = _sgd(tmp_path / "one", fashion_mnist_h5, 1, 40, extra_args=extra)
    many = _sgd(tmp_path / "many", fashion_mnist_h5, P, 40, impl, extra_args=extra)
    a, b = ckpt_mod.load(one.latest_checkpoint()), ckpt_mod.load(many.latest_checkpoint())
    assert b.params.shape == a.params.shape  # the checkpoint holds the canonical order
    assert np.abs(a.params - b.params).max() <= 1e-4 * np.abs(a.params).max()
    s = summary(many)
    assert s["topology"]["partitions"] == P and s["steps"] == 40 and s["examples_seen"] == 40 * 32
    parts = s["partitions"]
    assert [p["partition"] for p in parts] == list(range(P)) and sum(p["params"] for p in parts) == s["n_params"]
    assert all(p["halo_bytes"] > 0 and p["gather_bytes"] > 0 for p in parts)  # halos between LC layers, gather into the softmax
    assert abs(s["final_test_accuracy"] - summary(one)["final_test_accuracy"]) <= 0.01


@pytest.mark.parametrize("shards, impl", [(2, "openmpi"), (3, "mpich")])
def test_downpour_one_replica_of_two_partitions_is_bit_identical_to_partitioned_sgd(tmp_path, fashion_mnist_h5,
                                                                                     shards, impl):
    """1 replica x 2 partitions, fetch and push every step, fetches that see the replica's own pushes: each
    partition pushes only its range to the shards that hold it, and the shards apply Adagrad on those ranges:
    exactly SGD on 2 partitions, parameters and optimizer state bit for bit."""
    steps = ["--set", "train.max_steps=40", "--set", "optimizer.rule='adagrad'"]
    ref = _sgd(tmp_path / "sgd", fashion_mnist_h5, 2, 40, impl, extra_args=steps[2:])
    cfg = write_cfg(tmp_path / "dp", fashion_mnist_h5, shards=shards, replicas=1, model=LC,
                    extra="partitions = 2\n[comm]\noverlap = false\n[ps]\nread_own_writes = true\n")
    r = run_mpi(2 + shards, ["train", str(cfg), *steps], impl=impl, timeout=180)
    assert r.returncode == 0, r.stderr
    rd = only_run_dir(tmp_path / "dp")
    a, b = ckpt_mod.load(rd.latest_checkpoint()), ckpt_mod.load(ref.latest_checkpoint())
    assert np.array_equal(a.params, b.params)
    assert a.optimizer.keys() == b.optimizer.keys() and all(np.array_equal(a.optimizer[k], b.optimizer[k])
                                                            for k in b.optimizer)
    s = summary(rd)
    assert s["topology"]["partitions"] == 2
    reps = sorted(s["replicas"], key=lambda x: x["partition"])
    assert [x["partition"] for x in reps] == [0, 1] and sum(x["params"] for x in reps) == s["n_params"]
    # each partition talks only to the shards that hold its range (with 3 shards, not to all of them)
    used = [set(x["shards_used"]) for x in reps]
    assert used[0] | used[1] == set(range(shards)) and (shards < 3 or len(used[0]) < shards)
    assert all(x["model_parallel"]["halo_bytes"] > 0 for x in reps)


def test_downpour_2x2_resumes_on_other_partition_counts(tmp_path, fashion_mnist_h5):
    """2 replicas x 2 partitions x 2 shards (6 ranks), then resumed as 2 replicas x 1 partition (4 ranks) and
    as 1 replica x 3 partitions: the checkpoint's canonical order makes P a free choice.  Warmstart trains
    the lead's whole replica (both its partitions) alone first."""
    cfg = write_cfg(tmp_path, fashion_mnist_h5, shards=2, replicas=2, model=LC,
                    extra="partitions = 2\n[downpour]\nwarmstart_steps = 20\n")
    r = run_mpi(6, ["train", str(cfg), "--set", "train.max_steps=200", "--set", "optimizer.rule='adagrad'"],
                timeout=240)
    assert r.returncode == 0, r.stderr
    rd = only_run_dir(tmp_path)
    first = summary(rd)
    assert first["topology"]["partitions"] == 2 and first["lost_replicas"] == []
    assert r.stderr.count("warmstart over after 20 steps") == 1
    r = run_mpi(4, ["train", "--resume", str(rd.path), "--set", "train.max_steps=400",
                    "--set", "topology.partitions=1"], timeout=240)
    assert r.returncode == 0, r.stderr
    s = summary(rd)
    assert s["topology"]["partitions"] == 1 and s["examples_seen"] >= 400 * 32
    r = run_mpi(5, ["train", "--resume", str(rd.path), "--set", "train.max_steps=500", "--set", "topology.replicas=1",
                    "--set", "topology.partitions=3"], timeout=240)
    assert r.returncode == 0, r.stderr
    s = summary(rd)
    assert s["topology"]["partitions"] == 3 and s["examples_seen"] >= 500 * 32
    assert s["final_test_accuracy"] >= 0.74  # measured on the whole test set: 0.776 (async: a few points of spread)


def test_a_stopped_partition_costs_its_replica_only(tmp_path, fashion_mnist_h5):
    """SIGSTOP replica 1's partition 1 for longer than comm.timeout_seconds: its partner gives up waiting for
    the exchange (PartnerLost), the whole replica is marked failed, replica 0 goes on and the job completes."""
    from mpirun import stop_one_rank

    cfg = write_cfg(tmp_path, fashion_mnist_h5, shards=2, replicas=2, model=LC,
                    extra="partitions = 2\n[comm]\ntimeout_seconds = 6\n")
    code, out, err = stop_one_rank(
        6, ["train", str(cfg), "--set", "train.max_seconds=25", "--set", "train.max_steps=1000000",
            "--set", "train.eval_every_seconds=1"], tmp_path / "runs",
        lambda ranks: [r for r in ranks if r["role"] == "replica" and r["replica_id"] == 1 and r["partition_id"] == 1],
        after=2, stopped=12)
    assert code == 0, err
    s = summary(only_run_dir(tmp_path))
    assert s["stopped_because"] == "reached 25 s" and s["lost_replicas"] == [1]
    lost = [r for r in s["replicas"] if r["replica"] == 1]
    assert all(r["state"] == "failed" and "PartnerLost" in r["error"] for r in lost)
    kept = [r for r in s["replicas"] if r["replica"] == 0]
    assert all(r["state"] == "done" for r in kept) and kept[0]["steps"] > 2 * lost[0]["steps"]
