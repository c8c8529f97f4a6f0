"""Single-process training end to end on real Fashion-MNIST: learning, run directory, resume."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from dbnet import checkpoint as ckpt_mod
from dbnet import config as config_mod
from dbnet.errors import TrainingDiverged
from dbnet.progress import Progress
from dbnet.rundir import RunDir
from dbnet.train import resume_config, train


def make_cfg(tmp_path, fashion_mnist_h5, **train):
    doc = {
        "run": {"name": "t", "out_dir": str(tmp_path / "runs"), "seed": 3},
        "data": {"path": str(fashion_mnist_h5)},
        "model": {"hidden": [32], "activation": "relu"},
        "optimizer": {"rule": "momentum", "lr": 0.02},
        "train": {"batch_size": 64, "eval_every_seconds": 0, "checkpoint_every_seconds": 0, **train},
    }
    return config_mod.from_dict(doc)


def quiet():
    return Progress(None, enabled=False, stream=open("/dev/null", "w"))


def test_sgd_learns_and_writes_a_complete_run_dir(tmp_path, fashion_mnist_h5):
    cfg = make_cfg(tmp_path, fashion_mnist_h5, max_epochs=1.0, eval_every_steps=300, eval_examples=2000)
    s = train(cfg, progress=quiet())
    assert s["final_test_accuracy"] > 0.80, s  # one epoch of a 784-32-10 MLP
    assert s["examples_seen"] == 937 * 64 and s["steps"] == 937
    rd = RunDir(s["run_dir"])
    on_disk = json.loads(rd.summary_path.read_text())
    for key in ("algorithm", "final_test_accuracy", "best_test_accuracy", "examples_seen", "wall_seconds", "examples_per_second"):
        assert key in on_disk
    assert on_disk["algorithm"] == "sgd" and on_disk["examples_per_second"] > 0
    assert config_mod.from_toml_text(rd.config_path.read_text()) == cfg
    with h5py.File(rd.metrics_path) as f:
        assert list(f["step"][()]) == [0, 300, 600, 900, 937]
        assert f["test_accuracy"][-1] == s["final_test_accuracy"]
    assert rd.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (ck,) = ckpt_mod.list_checkpoints(rd.checkpoint_dir)
    loaded = ckpt_mod.load(ck)
    assert loaded.loop.step == 937 and loaded.params.dtype == np.float32 and "velocity" in loaded.optimizer


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, fashion_mnist_h5):
    # 1100 steps cross the epoch boundary (937 steps/epoch); the interrupted run stops mid-epoch 0.
    full = train(make_cfg(tmp_path / "a", fashion_mnist_h5, max_steps=1100, eval_every_steps=500,
                          eval_examples=500), progress=quiet())
    half = train(make_cfg(tmp_path / "b", fashion_mnist_h5, max_steps=550, eval_every_steps=500,
                          eval_examples=500), progress=quiet())
    cfg, rd, ck = resume_config(half["run_dir"], ["train.max_steps=1100"])
    assert ck.loop.step == 550 and ck.loop.batch_in_epoch == 550
    resumed = train(cfg, rd=rd, resume=ck, progress=quiet())
    assert resumed["steps"] == full["steps"] == 1100
    a = ckpt_mod.load(RunDir(full["run_dir"]).latest_checkpoint())
    b = ckpt_mod.load(rd.latest_checkpoint())
    assert np.array_equal(a.params, b.params)
    assert np.array_equal(a.optimizer["velocity"], b.optimizer["velocity"])
    assert a.loop.examples_seen == b.loop.examples_seen and a.loop.epoch == b.loop.epoch == 1


def test_resume_refuses_model_changes(tmp_path, fashion_mnist_h5):
    s = train(make_cfg(tmp_path, fashion_mnist_h5, max_steps=5, eval_examples=100), progress=quiet())
    with pytest.raises(config_mod.ConfigError, match="cannot be changed when resuming"):
        resume_config(s["run_dir"], ["model.hidden=[8]"])


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, fashion_mnist_h5):
    s = train(make_cfg(tmp_path, fashion_mnist_h5, max_steps=5, eval_examples=100), progress=quiet())
    ck = RunDir(s["run_dir"]).latest_checkpoint()
    ck.write_bytes(ck.read_bytes()[:1000])
    with pytest.raises(ckpt_mod.CheckpointError, match="not a readable HDF5 checkpoint"):
        resume_config(s["run_dir"], ["train.max_steps=10"])


def test_divergence_is_reported(tmp_path, fashion_mnist_h5):
    cfg = make_cfg(tmp_path, fashion_mnist_h5, max_steps=200, eval_examples=100)
    cfg = cfg.replace(optimizer=config_mod.OptimizerConfig(rule="sgd", lr=1e35))
    with pytest.raises(TrainingDiverged, match="training loss is (nan|inf); lower optimizer.lr"):
        train(cfg, progress=quiet())


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "dbnet", *args], capture_output=True, text=True, timeout=120, **kw)


def test_cli_train_and_resume(tmp_path, fashion_mnist_h5):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\npath = "{fashion_mnist_h5}"\n[model]\nhidden = [16]\n'
                   f'[train]\nmax_steps = 30\neval_examples = 200\n[run]\nout_dir = "{tmp_path / "runs"}"\n')
    r = run_cli("train", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "summary:" in r.stdout and "plot:" in r.stdout
    run_dir = next((tmp_path / "runs").iterdir())
    r = run_cli("train", "--resume", str(run_dir), "--set", "train.max_steps=60")
    assert r.returncode == 0, r.stderr
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 60


def test_cli_bad_config_is_one_line_exit_2(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[train]\nbatch_sise = 3\n")
    r = run_cli("train", str(cfg))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown key train.batch_sise" in r.stderr


def test_cli_info():
    r = run_cli("info")
    assert r.returncode == 0, r.stderr
    for key in ("numpy", "numba", "h5py", "mpi4py", "MPI library", "cpu_count", "numba threading layer"):
        assert key in r.stdout
