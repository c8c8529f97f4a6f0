"""Every experiment config runs: a few steps of each, as its header's command would run it."""

import json
import math
from pathlib import Path

import pytest

from dbnet import config as config_mod
from mpirun import run_mpi

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.toml"))
SHORT = ["train.max_steps=4", "train.max_seconds=0", "train.max_epochs=0", "train.eval_examples=64",
         "train.eval_every_seconds=0", "train.checkpoint_every_seconds=0"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_there_are_experiments():
    assert len(EXPERIMENTS) >= 4


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_runs_a_few_steps(path, tmp_path, cache, monkeypatch):
    text = path.read_text()
    assert "Reproduces:" in text and "Run:" in text  # each says what it reproduces and how to run it
    monkeypatch.setenv("DBNET_CACHE", str(cache))
    overrides = SHORT + [f"run.out_dir={tmp_path / 'runs'}"]
    cfg = config_mod.load(path, overrides)
    if cfg.distributed:
        from dbnet.algorithms import world_size

        r = run_mpi(world_size(cfg), ["train", str(path), *[a for o in overrides + ["downpour.warmstart_steps=2"] for a in ("--set", o)]],
                    timeout=240)
        assert r.returncode == 0, r.stderr
    else:
        from dbnet.progress import Progress
        from dbnet.train import train

        train(cfg, progress=Progress(None, enabled=False, stream=open("/dev/null", "w")))
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "curves.png").is_file()
    s = json.loads((run_dir / "summary.json").read_text())
    B = cfg.train.batch_size
    assert s["algorithm"] == cfg.train.algorithm and s["stopped_because"] == "reached 4 steps"
    if cfg.distributed:  # replicas stop themselves at the job's limit: a step or two of overshoot each
        assert 4 * B <= s["examples_seen"] <= (4 + 2 * cfg.topology.replicas) * B and s["lost_replicas"] == []
    else:
        assert s["steps"] == 4 and s["examples_seen"] == 4 * B
    assert 0 <= s["final_test_accuracy"] <= 1 and s["best_test_accuracy"] >= s["final_test_accuracy"]
    assert math.isfinite(s["final_test_loss"]) and s["examples_per_second"] > 0
