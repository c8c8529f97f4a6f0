"""Checkpoint files: round trip, checksums verified on load, NaN refused, format 1 still readable."""

from __future__ import annotations

import zlib
from dataclasses import asdict

import h5py
import numpy as np
import pytest

from dbnet import checkpoint as ckpt_mod
from dbnet.errors import CheckpointError
from dbnet.metrics import COLUMNS, Metrics

N = 1000


def make_ckpt(step=7, params=None) -> ckpt_mod.Checkpoint:
    rng = np.random.default_rng(step)
    metrics = Metrics()
    for i in range(3):
        metrics.append(**{c: float(i + j) for j, c in enumerate(COLUMNS)})
    return ckpt_mod.Checkpoint(
        params=rng.standard_normal(N).astype(np.float32) if params is None else params,
        optimizer={"velocity": rng.standard_normal(N).astype(np.float32)},
        loop=ckpt_mod.LoopState(step=step, epoch=1, batch_in_epoch=3, examples_seen=step * 64,
                                wall_seconds=1.25, train_seconds=0.5),
        config_toml='[model]\nhidden = [8]\n',
        metrics=metrics,
        extra={"replica_positions": np.arange(6, dtype=np.int64)},
    )


def flip_byte(path, dataset, at=0):
    """Flip one byte of ``dataset``'s stored data, behind HDF5's back (contiguous datasets)."""
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_offset()
    assert offset is not None
    with open(path, "r+b") as raw:
        raw.seek(offset + at)
        byte = raw.read(1)[0]
        raw.seek(offset + at)
        raw.write(bytes([byte ^ 0x40]))


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / ckpt_mod.checkpoint_name(7)
    ckpt_mod.save(path, make_ckpt())
    return path


def test_round_trip_sets_path(saved):
    want = make_ckpt()
    got = ckpt_mod.load(saved, n_params=N, state_names=("velocity",))
    assert got.path == str(saved) and want.path == ""
    np.testing.assert_array_equal(got.params, want.params)
    np.testing.assert_array_equal(got.optimizer["velocity"], want.optimizer["velocity"])
    np.testing.assert_array_equal(got.extra["replica_positions"], want.extra["replica_positions"])
    assert got.loop == want.loop and got.config_toml == want.config_toml and got.metrics.rows == want.metrics.rows


def test_every_array_carries_the_crc32_of_its_bytes(saved):
    with h5py.File(saved) as f:
        assert f.attrs["format_version"] == 2
        names = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        assert {"params", "optimizer/velocity", "extra/replica_positions", "metrics/test_accuracy"} <= set(names)
        for name in names:
            a = f[name][()]
            assert f[name].attrs["crc32"] == zlib.crc32(np.asarray(a, a.dtype.newbyteorder("<")).tobytes()), name


@pytest.mark.parametrize("dataset", ["params", "optimizer/velocity", "extra/replica_positions", "metrics/step"])
def test_corrupt_array_is_a_checkpoint_error_naming_file_and_array(saved, dataset):
    flip_byte(saved, dataset, at=5)
    with pytest.raises(CheckpointError) as e:
        ckpt_mod.load(saved)
    assert str(e.value) == f"{saved}: /{dataset}: checksum mismatch (corrupt file)"


@pytest.mark.parametrize("attr,value", [("config", "[model]\nhidden = [9]\n"), ("step", 8), ("wall_seconds", 1.5)])
def test_changed_root_attribute_is_a_checkpoint_error(saved, attr, value):
    with h5py.File(saved, "r+") as f:
        f.attrs[attr] = value
    with pytest.raises(CheckpointError, match=r"config and loop attributes: checksum mismatch \(corrupt file\)"):
        ckpt_mod.load(saved)


def test_missing_checksum_is_a_checkpoint_error(saved):
    with h5py.File(saved, "r+") as f:
        del f["optimizer/velocity"].attrs["crc32"]
    with pytest.raises(CheckpointError, match=r"/optimizer/velocity has no crc32 attribute"):
        ckpt_mod.load(saved)


def test_truncated_file(saved):
    saved.write_bytes(saved.read_bytes()[:3000])
    with pytest.raises(CheckpointError, match=r"not a readable HDF5 checkpoint|corrupt file"):
        ckpt_mod.load(saved)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_params_are_refused(tmp_path, bad):
    params = np.ones(N, np.float32)
    params[[3, 500]] = bad
    path = tmp_path / "nan.h5"
    ckpt_mod.save(path, make_ckpt(params=params))
    with pytest.raises(CheckpointError, match=r"nan.h5: params hold 2 non-finite values \(NaN or Inf\)"):
        ckpt_mod.load(path)


def write_format_1(path, ck: ckpt_mod.Checkpoint) -> None:
    """A checkpoint as dbnet wrote them before checksums (format_version 1)."""
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "dbnet-checkpoint"
        f.attrs["format_version"] = 1
        f.attrs["config"] = ck.config_toml
        for k, v in asdict(ck.loop).items():
            f.attrs[k] = v
        f.create_dataset("params", data=ck.params)
        for name, arr in ck.optimizer.items():
            f.create_dataset(f"optimizer/{name}", data=arr)
        ck.metrics.write_group(f.create_group("metrics"))
        for name, arr in ck.extra.items():
            f.create_dataset(f"extra/{name}", data=arr)


def test_format_1_still_loads_unverified(tmp_path):
    path = tmp_path / "v1.h5"
    want = make_ckpt()
    write_format_1(path, want)
    got = ckpt_mod.load(path, n_params=N, state_names=("velocity",))
    np.testing.assert_array_equal(got.params, want.params)
    assert got.loop == want.loop and got.path == str(path)
    flip_byte(path, "extra/replica_positions")  # nothing to verify it against
    assert ckpt_mod.load(path).extra["replica_positions"][0] != 0


def test_unknown_format_version(saved):
    with h5py.File(saved, "r+") as f:
        f.attrs["format_version"] = 3
    with pytest.raises(CheckpointError, match=r"format_version is 3, this dbnet reads 1 and 2"):
        ckpt_mod.load(saved)
