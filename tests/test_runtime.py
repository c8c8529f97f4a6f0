"""The runtime under bad input and faults, with a real mpiexec (Open MPI and MPICH).

Bad input: one ``dbnet: error:`` line, a non-zero exit on every rank within
30 s, no traceback, no run directory left behind.  Faults: a stopped
replica stalls no one; resume survives corrupt checkpoints and changed
topologies; ranks.json names every rank.
"""

import json
import os
import time

import h5py
import numpy as np
import pytest

from dbnet import checkpoint as ckpt_mod
from mpirun import run_mpi
from test_downpour import only_run_dir, summary, write_cfg


def _bad_inputs(tmp_path, h5):
    cfg = write_cfg(tmp_path, h5, shards=1, replicas=2)
    cfg.write_text(cfg.read_text().replace("[train]\n", "[train]\nmax_steps = 10\n"))
    notable = tmp_path / "notable.toml"
    notable.write_text("run = 5\n")
    return {
        "config is a directory": ([str(tmp_path)], "cannot read the config file"),
        "run name escapes out_dir": ([str(cfg), "--set", "run.name=../../x"], "run.name = '../../x': must be"),
        "crash_rank out of range": ([str(cfg), "--set", "faults.crash_rank=3"], "faults.crash_rank = 3: must be <"),
        "--set on a non-table": ([str(notable), "--set", "run.name=x"], "[run] in the config is 5, not a table"),
        "missing data file": ([str(cfg), "--set", f"data.path='{tmp_path}/none.h5'"], "no such dataset file"),
        "moved key": ([str(cfg), "--set", "downpour.overlap=false"], "downpour.overlap has moved to comm.overlap"),
    }


@pytest.mark.parametrize("impl", ["openmpi", "mpich"])
@pytest.mark.parametrize("case", ["config is a directory", "run name escapes out_dir", "crash_rank out of range",
                                  "--set on a non-table", "missing data file", "moved key"])
def test_bad_input_is_one_line_on_every_rank(tmp_path, fashion_mnist_h5, case, impl):
    if impl == "mpich" and case not in ("config is a directory", "missing data file"):
        pytest.skip("the same code path as under Open MPI")
    args, expect = _bad_inputs(tmp_path, fashion_mnist_h5)[case]
    t0 = time.monotonic()
    r = run_mpi(3, ["train", *args], impl=impl, timeout=60)
    assert r.returncode != 0 and time.monotonic() - t0 < 30
    lines = [line for line in r.stderr.splitlines() if line.startswith("dbnet:")]
    assert len(lines) == 1 and expect in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # no partial run dir


def test_unwritable_cache_is_one_line(tmp_path, fashion_mnist_h5):
    cfg = write_cfg(tmp_path, fashion_mnist_h5, shards=1, replicas=2)
    cfg.write_text(cfg.read_text().replace("[train]\n", "[train]\nmax_steps = 10\n"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    env_cache = str(blocker / "cache")  # a cache directory that cannot be created (even by root)
    old = os.environ.get("DBNET_CACHE")
    os.environ["DBNET_CACHE"] = env_cache
    try:
        r = run_mpi(3, ["train", str(cfg), "--set", "data.path=''"], timeout=60)
    finally:
        if old is None:
            os.environ.pop("DBNET_CACHE")
        else:
            os.environ["DBNET_CACHE"] = old
    lines = [line for line in r.stderr.splitlines() if line.startswith("dbnet:")]
    assert r.returncode != 0 and len(lines) == 1 and "Not a directory" in lines[0], r.stderr


def test_an_error_on_a_rank_names_it_and_ends_the_job(tmp_path, fashion_mnist_h5):
    """A shard that crashes mid-run (its 50th update): one message naming it, every rank gone promptly."""
    cfg = write_cfg(tmp_path, fashion_mnist_h5, shards=2, replicas=2,
                    extra="[faults]\ncrash_rank = 3\ncrash_at_step = 50\n")
    t0 = time.monotonic()
    r = run_mpi(4, ["train", str(cfg), "--set", "train.max_steps=100000"], timeout=90)
    assert r.returncode != 0 and time.monotonic() - t0 < 60
    assert "unhandled error on rank 3 (shard 1)" in r.stderr and "injected crash on rank 3" in r.stderr, r.stderr


def _steps_rate(timeline, replica, t0, t1):
    rows = [row for row in timeline if t0 <= row[0] <= t1]
    (ta, *a), (tb, *b) = rows[0], rows[-1]
    return (b[replica] - a[replica]) / (tb - ta)


@pytest.mark.parametrize("impl", ["openmpi", "mpich"])
def test_a_stopped_replica_stalls_no_one(tmp_path, fashion_mnist_h5, impl):
    """SIGSTOP replica 2 for 6 s: the other replicas never stall and keep their pace, evaluations go on,
    and after SIGCONT it rejoins and the job completes.

    Stopping a rank frees CPU on this oversubscribed 2-core machine, so the others usually speed up; the
    floor allows for the noise of 5 ranks on 2 cores (a stall, as before the lock-free server, gives ~0).
    The README's measurement (20 s stops, medians) is tools/sigstop.py's."""
    cfg = write_cfg(tmp_path, fashion_mnist_h5, shards=2, replicas=3,
                    extra="[comm]\ntimeout_seconds = 4\n")  # shorter than the stop: nobody may wait for it
    from mpirun import stop_one_rank

    code, out, err = stop_one_rank(
        5, ["train", str(cfg), "--set", "train.max_seconds=17", "--set", "train.max_steps=1000000",
            "--set", "train.eval_every_seconds=0.25"], tmp_path / "runs",
        lambda ranks: [r for r in ranks if r["role"] == "replica" and r["replica_id"] == 2],
        impl=impl, after=3, stopped=6, timeout=90)
    assert code == 0, err
    s = summary(only_run_dir(tmp_path))
    assert s["stopped_because"] == "reached 17 s" and s["lost_replicas"] == []
    tl = s["replica_steps_timeline"]
    # the stop: the victim's step is flat for ~6 s somewhere; find that window from its own steps
    runs, start = [], 0  # runs of evaluations with the victim's step unchanged: (first time, time it moved)
    for i in range(1, len(tl) + 1):
        if i == len(tl) or tl[i][3] != tl[start][3]:
            runs.append((tl[start][0], tl[min(i, len(tl) - 1)][0]))
            start = i
    t_stop, t_cont = max(runs, key=lambda r: r[1] - r[0])
    assert 4 <= t_cont - t_stop <= 9 and t_stop > 2, (t_stop, t_cont, tl)
    t_train = next(row[0] for row in tl if row[1] > 0)
    assert "silent for" in err and "is back after" in err, err  # the lead named it, then saw it return
    evals_during = [row for row in tl if t_stop < row[0] < t_cont]
    assert len(evals_during) >= 5  # evaluations went on (every 0.25 s asked; 5 ranks share 2 cores)
    for rep in (0, 1):
        before = _steps_rate(tl, rep, t_train, t_stop)
        during = _steps_rate(tl, rep, t_stop, t_cont)
        assert during >= 0.75 * before, (rep, before, during)
        for a, b in zip(evals_during, evals_during[1:]):
            assert b[1 + rep] > a[1 + rep], (rep, a, b)  # progress between any two evaluations
    assert _steps_rate(tl, 2, t_cont, tl[-1][0]) > 0 and s["replicas"][2]["state"] == "done"  # it rejoined


def test_ranks_json_names_every_rank(tmp_path, fashion_mnist_h5):
    cfg = write_cfg(tmp_path, fashion_mnist_h5, shards=2, replicas=2)
    r = run_mpi(4, ["train", str(cfg), "--set", "train.max_steps=20"], timeout=90)
    assert r.returncode == 0, r.stderr
    ranks = json.loads((only_run_dir(tmp_path).path / "ranks.json").read_text())
    assert [(x["rank"], x["role"], x["replica_id"], x["shard_id"], x["lead"]) for x in ranks] == [
        (0, "replica", 0, None, True), (1, "replica", 1, None, False), (2, "shard", None, 0, False),
        (3, "shard", None, 1, False)]
    assert len({x["pid"] for x in ranks}) == 4 and all(x["host"] for x in ranks)


def test_resume_skips_a_corrupt_checkpoint_and_may_change_the_topology(tmp_path, fashion_mnist_h5):
    cfg = write_cfg(tmp_path, fashion_mnist_h5, shards=2, replicas=2)
    cfg.write_text(cfg.read_text().replace('rule = "sgd"', 'rule = "adagrad"\nlr = 0.02').replace("lr = 0.05\n", ""))
    r = run_mpi(4, ["train", str(cfg), "--set", "train.max_steps=400", "--set", "train.checkpoint_every_steps=50",
                    "--set", "train.keep_checkpoints=3"], timeout=120)
    assert r.returncode == 0, r.stderr
    rd = only_run_dir(tmp_path)
    ckpts = ckpt_mod.list_checkpoints(rd.checkpoint_dir)
    assert len(ckpts) >= 2  # how many intervals the lead saw depends on timing; the final one is the newest
    newest, older = ckpts[-1], ckpt_mod.load(ckpts[-2])
    with h5py.File(newest, "r") as f:
        offset = f["params"].id.get_offset()
    with open(newest, "r+b") as f:  # flip bytes inside the parameters
        f.seek(offset + 100)
        f.write(b"\xff\xff\xff\x7f")
    # 2 shards x 2 replicas -> 3 shards x 3 replicas: the vector is re-sliced, the data positions re-spread
    r = run_mpi(6, ["train", "--resume", str(rd.path), "--set", "train.max_steps=700",
                    "--set", "topology.shards=3", "--set", "topology.replicas=3"], timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"skipping {newest}" in r.stderr and "checksum mismatch" in r.stderr, r.stderr
    assert "shards changed from 2 to 3" in r.stderr and "replicas changed from 2 to 3" in r.stderr
    s = summary(rd)
    assert s["topology"]["shards"] == 3 and len(s["replicas"]) == 3
    assert s["examples_seen"] >= 700 * 32 and s["final_test_accuracy"] > 0.7
    assert sum(rep["examples_this_run"] for rep in s["replicas"]) == s["examples_seen"] - older.loop.examples_seen
    last = ckpt_mod.load(rd.latest_checkpoint())
    assert last.extra["replica_steps"].shape == (3,) and last.extra["shard_versions"].shape == (3,)
    assert np.isfinite(last.params).all()


def test_more_shards_than_parameters_is_refused(tmp_path):
    """Checked on rank 0 before anything starts (no MPI needed to call it)."""
    from dbnet.data.h5 import write_dataset
    from dbnet.runtime.startup import _rank0

    h5 = tmp_path / "tiny.h5"
    x = np.zeros((8, 2), np.uint8)
    y = np.array([0, 1] * 4)
    write_dataset(h5, name="tiny", train=(x, y), test=(x, y), n_classes=2, input_shape=[2], x_scale=1.0,
                  x_offset=0.0, source="test")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""[run]\nout_dir = "{tmp_path / 'runs'}"\n[data]\npath = "{h5}"\n[model]\nhidden = [1]\n
[train]\nalgorithm = "downpour"\nbatch_size = 2\nmax_steps = 1\n[topology]\nshards = 8\nreplicas = 1\n""")
    out = _rank0(str(cfg), [], None, 9, {})  # 2*1+1 + 1*2+2 = 7 parameters, 8 shards
    assert out == {"error": "topology.shards = 8: more shards than the model's 7 parameters"}
    assert not (tmp_path / "runs").exists()


def test_resume_onto_fewer_shards_and_replicas(tmp_path, fashion_mnist_h5):
    cfg = write_cfg(tmp_path, fashion_mnist_h5, shards=2, replicas=3)
    r = run_mpi(5, ["train", str(cfg), "--set", "train.max_steps=300"], timeout=120)
    assert r.returncode == 0, r.stderr
    rd = only_run_dir(tmp_path)
    first = ckpt_mod.load(rd.latest_checkpoint())
    r = run_mpi(3, ["train", "--resume", str(rd.path), "--set", "train.max_steps=500",
                    "--set", "topology.shards=1", "--set", "topology.replicas=2"], timeout=120)
    assert r.returncode == 0, r.stderr
    assert "shards changed from 2 to 1" in r.stderr and "replicas changed from 3 to 2" in r.stderr
    s = summary(rd)
    assert s["topology"]["shards"] == 1 and len(s["replicas"]) == 2 and s["examples_seen"] >= 500 * 32
    last = ckpt_mod.load(rd.latest_checkpoint())
    assert last.extra["replica_steps"].shape == (2,) and last.loop.examples_seen > first.loop.examples_seen
