"""The run directory: resuming from the newest readable checkpoint, stale temporaries removed."""

from __future__ import annotations

import tempfile

import h5py
import numpy as np
import pytest

from dbnet import checkpoint as ckpt_mod
from dbnet import config as config_mod
from dbnet.errors import CheckpointError
from dbnet.metrics import Metrics
from dbnet.rundir import RunDir
from dbnet.train import resume_config

N = 50


def make_cfg(tmp_path):
    return config_mod.from_dict({
        "run": {"name": "r", "out_dir": str(tmp_path / "runs")},
        "data": {"path": str(tmp_path / "unused.h5")},
        "model": {"hidden": [4]},
        "optimizer": {"rule": "momentum", "lr": 0.1},
    })


def make_ckpt(step, cfg=None, params=None) -> ckpt_mod.Checkpoint:
    return ckpt_mod.Checkpoint(
        params=np.full(N, step, np.float32) if params is None else params,
        optimizer={"velocity": np.zeros(N, np.float32)},
        loop=ckpt_mod.LoopState(step=step, examples_seen=10 * step),
        config_toml=config_mod.to_toml(cfg) if cfg else "",
        metrics=Metrics(),
    )


def corrupt(path):
    with h5py.File(path, "r") as f:
        offset = f["params"].id.get_offset()
    data = bytearray(path.read_bytes())
    data[offset + 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[:2000])


def make_nan(path):  # a file that verifies but holds NaN parameters
    ckpt_mod.save(path, make_ckpt(int(path.name[5:14]), params=np.full(N, np.nan, np.float32)))


@pytest.fixture
def rd(tmp_path):
    rd = RunDir.create(make_cfg(tmp_path))
    for step in (10, 20):
        rd.save_checkpoint(make_ckpt(step), keep=5)
    return rd


def test_all_good_gives_the_newest_silently(rd):
    warnings = []
    ck = rd.load_latest_checkpoint(warn=warnings.append)
    assert ck.loop.step == 20 and ck.path == str(rd.checkpoint_dir / "ckpt-000000020.h5") and warnings == []
    assert rd.latest_checkpoint() == rd.checkpoint_dir / "ckpt-000000020.h5"


@pytest.mark.parametrize("damage", [corrupt, truncate, make_nan])
def test_unreadable_newest_falls_back_to_the_older(rd, damage):
    newest, older = rd.checkpoint_dir / "ckpt-000000020.h5", rd.checkpoint_dir / "ckpt-000000010.h5"
    damage(newest)
    warnings = []
    ck = rd.load_latest_checkpoint(state_names=("velocity",), warn=warnings.append)
    assert ck.loop.step == 10 and ck.path == str(older)
    np.testing.assert_array_equal(ck.params, np.full(N, 10, np.float32))
    skip, resuming = warnings
    assert skip.startswith(f"dbnet: warning: skipping {newest}: ") and "\n" not in skip
    assert f"{newest}: {newest}" not in skip  # the reason without the path again
    assert resuming == f"dbnet: warning: resuming from {older}"
    assert rd.latest_checkpoint() == newest  # the name-only lookup is unchanged


def test_default_warnings_go_to_stderr(rd, capsys):
    corrupt(rd.checkpoint_dir / "ckpt-000000020.h5")
    rd.load_latest_checkpoint()
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        f"dbnet: warning: skipping {rd.checkpoint_dir / 'ckpt-000000020.h5'}: /params: checksum mismatch (corrupt file)",
        f"dbnet: warning: resuming from {rd.checkpoint_dir / 'ckpt-000000010.h5'}",
    ]


def test_none_readable(rd):
    corrupt(rd.checkpoint_dir / "ckpt-000000020.h5")
    truncate(rd.checkpoint_dir / "ckpt-000000010.h5")
    warnings = []
    with pytest.raises(CheckpointError, match=r"none of the 2 checkpoints in .*checkpoints is readable "
                                              r"\(the newest, ckpt-000000020.h5: /params: checksum mismatch"):
        rd.load_latest_checkpoint(warn=warnings.append)
    assert len(warnings) == 2


def test_state_names_that_do_not_match_are_skipped_too(rd):
    with pytest.raises(CheckpointError, match=r"does not match the update rule's \['sum_sq'\]"):
        rd.load_latest_checkpoint(state_names=("sum_sq",), warn=lambda line: None)


def test_no_checkpoint(tmp_path):
    rd = RunDir.create(make_cfg(tmp_path))
    with pytest.raises(CheckpointError, match=r"no checkpoint to resume from"):
        rd.load_latest_checkpoint()


def test_saving_after_a_fallback_drops_the_skipped_later_checkpoint(rd):
    corrupt(rd.checkpoint_dir / "ckpt-000000020.h5")
    ck = rd.load_latest_checkpoint(warn=lambda line: None)
    ck.loop.step = 15  # training went on from step 10
    rd.save_checkpoint(ck, keep=1)  # with the corrupt step-20 file kept, keep=1 would delete this new one
    assert [p.name for p in ckpt_mod.list_checkpoints(rd.checkpoint_dir)] == ["ckpt-000000015.h5"]
    assert rd.load_latest_checkpoint(warn=pytest.fail).loop.step == 15


def test_resume_config_uses_the_newest_readable_checkpoint(tmp_path, capsys):
    cfg = make_cfg(tmp_path)
    rd = RunDir.create(cfg)
    for step in (10, 20):
        rd.save_checkpoint(make_ckpt(step, cfg), keep=5)
    truncate(rd.checkpoint_dir / "ckpt-000000020.h5")
    got_cfg, got_rd, ck = resume_config(rd.path, [])
    assert got_cfg == cfg and got_rd.path == rd.path
    assert ck.loop.step == 10 and ck.path == str(rd.checkpoint_dir / "ckpt-000000010.h5")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("dbnet: warning: skipping ") and "resuming from" in err[1]


def _atomic_temporary(folder, target_name):
    """A temporary named exactly as dbnet.atomic.atomic_path names them, left behind as by a killed write."""
    fd, name = tempfile.mkstemp(prefix=f".{target_name}.", suffix=".tmp", dir=folder)
    with open(fd, "wb") as f:
        f.write(b"half written")
    return name.rsplit("/", 1)[1]


def test_open_existing_removes_stale_temporaries_only(rd):
    stale = {
        rd.path: [_atomic_temporary(rd.path, "curves.png"), _atomic_temporary(rd.path, "metrics.h5"),
                  ".summary.json.abc_1234.tmp"],
        rd.checkpoint_dir: [_atomic_temporary(rd.checkpoint_dir, "ckpt-000000030.h5")],
    }
    kept = {
        rd.path: ["notes.tmp", ".notes.tmp", ".a.toolong12.tmp", ".b.short.tmp", ".c.abcd1234.tmp.bak"],
        rd.checkpoint_dir: ["ckpt-000000030.h5.tmp"],
    }
    (rd.path / ".summary.json.abc_1234.tmp").write_text("x")
    for folder, names in kept.items():
        for name in names:
            (folder / name).write_text("mine")
    (rd.path / "sub").mkdir()
    _atomic_temporary(rd.path / "sub", "other")  # not this run dir's own files

    before = {p.name for p in rd.path.iterdir()} | {p.name for p in rd.checkpoint_dir.iterdir()}
    opened = RunDir.open_existing(rd.path)
    after = {p.name for p in rd.path.iterdir()} | {p.name for p in rd.checkpoint_dir.iterdir()}
    removed = sorted(p.name for p in opened.removed_temporaries)
    assert removed == sorted(n for names in stale.values() for n in names)
    assert before - after == set(removed)
    for folder, names in kept.items():
        assert all((folder / n).read_text() == "mine" for n in names)
    assert len(list((rd.path / "sub").iterdir())) == 1
    assert {"config.toml", "checkpoints"} <= after and len(ckpt_mod.list_checkpoints(rd.checkpoint_dir)) == 2


def test_open_existing_needs_a_run_dir(tmp_path):
    with pytest.raises(CheckpointError, match=r"not a run directory \(no config.toml\)"):
        RunDir.open_existing(tmp_path)
