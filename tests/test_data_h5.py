"""The HDF5 layout, its validation, and the streaming sharded reader."""

from __future__ import annotations

import argparse
import shutil
import zlib

import h5py
import numpy as np
import pytest

from dbnet.data import H5Dataset, ensure_dataset, write_dataset
from dbnet.data import h5 as h5_mod
from dbnet.data.h5 import import_permutation, write_checksums
from dbnet.data.commands import register
from dbnet.errors import DataError
from dbnet.partition import balanced_range

N_TRAIN, N_TEST, N_CLASSES = 1000, 130, 7
SMALL = dict(block_rows=64, window_blocks=3)  # many blocks and windows in a small file


def make_ids_dataset(path, n_train=N_TRAIN, n_test=N_TEST, **kw):
    """uint8 rows that encode their own id (``x[:, 0] + 256 * x[:, 1]``), labels ``id % N_CLASSES``."""

    def split(n, seed):
        ids = np.arange(n)
        x = np.random.default_rng(seed).integers(0, 256, size=(n, 12), dtype=np.uint8)
        x[:, 0], x[:, 1] = ids % 256, ids // 256
        return x, (ids % N_CLASSES).astype(np.uint8)

    args = dict(name="ids", n_classes=N_CLASSES, input_shape=[3, 4], x_scale=1.0, x_offset=0.0, source="test")
    return write_dataset(path, train=split(n_train, 1), test=split(n_test, 2), **{**args, **kw})


def ids_of(x):
    x = x.astype(np.int64)
    return x[:, 0] + 256 * x[:, 1]


def epoch_ids(ds, batch_size=32, **kw):
    """Ids of every example yielded, in order, checking each batch's labels against its rows."""
    out = []
    for x, y in ds.batches(batch_size, **{"seed": 0, "epoch": 0, **kw}):
        ids = ids_of(x)
        np.testing.assert_array_equal(y, ids % N_CLASSES)
        out.append(ids)
    return np.concatenate(out) if out else np.zeros(0, np.int64)


@pytest.fixture
def ids_h5(tmp_path):
    return make_ids_dataset(tmp_path / "ids.h5")


def test_layout(ids_h5):
    with h5py.File(ids_h5) as f:
        assert f.attrs["format"] == "dbnet-dataset" and f.attrs["format_version"] == 3
        assert f["train/x"].shape == (N_TRAIN, 12) and f["train/x"].dtype == np.uint8 and f["train/x"].chunks
        assert f["train/y"].dtype == np.uint8
        train_ids, test_ids = ids_of(f["train/x"][...]), ids_of(f["test/x"][...])
    assert sorted(train_ids) == list(range(N_TRAIN)) and not np.array_equal(train_ids, np.arange(N_TRAIN))
    np.testing.assert_array_equal(test_ids, import_permutation("test", N_TEST))  # a fixed shuffle of the test rows


def test_properties_and_context_manager(ids_h5):
    with H5Dataset(ids_h5, "test", shard=1, n_shards=3) as ds:
        assert (ds.n_examples, ds.n_inputs, ds.n_classes, ds.name, ds.input_shape) == (43, 12, 7, "ids", (3, 4))
        assert ds.rows == balanced_range(N_TEST, 3, 1)
        assert ds.n_batches(10) == 4 and ds.n_batches(10, drop_last=False) == 5
    assert not ds._file  # closed


@pytest.mark.parametrize("n_shards", [1, 2, 3, 7])
def test_shards_are_disjoint_and_cover_the_split(ids_h5, n_shards):
    seen = []
    for k in range(n_shards):
        with H5Dataset(ids_h5, "train", k, n_shards, **SMALL) as ds:
            ids = epoch_ids(ds, drop_last=False, seed=3, epoch=1)
            assert len(ids) == ds.n_examples == np.subtract(*balanced_range(N_TRAIN, n_shards, k)[::-1])
            seen.append(ids)
    all_ids = np.concatenate(seen)
    assert len(all_ids) == N_TRAIN and len(np.unique(all_ids)) == N_TRAIN


def test_every_example_once_per_epoch(ids_h5):
    with H5Dataset(ids_h5, **SMALL) as ds:
        ids = epoch_ids(ds, batch_size=33, drop_last=False)
        assert sorted(ids) == list(range(N_TRAIN))
        dropped = epoch_ids(ds, batch_size=33)
        assert len(dropped) == ds.n_batches(33) * 33 == 990 and len(np.unique(dropped)) == 990


def test_order_is_deterministic_per_seed_and_epoch(ids_h5):
    with H5Dataset(ids_h5, **SMALL) as ds:
        a = epoch_ids(ds, seed=5, epoch=2)
        np.testing.assert_array_equal(a, epoch_ids(ds, seed=5, epoch=2))
        assert not np.array_equal(a, epoch_ids(ds, seed=5, epoch=3))
        assert not np.array_equal(a, epoch_ids(ds, seed=6, epoch=2))
        # The order does not depend on the batch size.
        b = epoch_ids(ds, batch_size=7, seed=5, epoch=2, drop_last=False)
        np.testing.assert_array_equal(a, b[: len(a)])
    with H5Dataset(ids_h5, **SMALL) as again:  # nor on the process
        np.testing.assert_array_equal(a, epoch_ids(again, seed=5, epoch=2))


def test_shuffle_is_local_to_windows(ids_h5):
    with H5Dataset(ids_h5, block_rows=100, window_blocks=2) as ds, h5py.File(ids_h5) as f:
        row_of_id = np.argsort(ids_of(f["train/x"][...]))
        rows = row_of_id[epoch_ids(ds, batch_size=50, drop_last=False)]
        for w in range(5):  # each run of 200 examples comes from exactly 2 blocks of 100 rows
            assert len(np.unique(rows[200 * w : 200 * (w + 1)] // 100)) == 2


def test_no_shuffle_reads_in_row_order(ids_h5):
    with H5Dataset(ids_h5, "test", 1, 2, **SMALL) as ds, h5py.File(ids_h5) as f:
        lo, hi = ds.rows
        ids = epoch_ids(ds, batch_size=10, shuffle=False, drop_last=False)
        np.testing.assert_array_equal(ids, ids_of(f["test/x"][lo:hi]))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_start_batch_resumes_the_same_stream(ids_h5, shuffle, drop_last):
    with H5Dataset(ids_h5, "train", 1, 2, **SMALL) as ds:
        kw = dict(seed=1, epoch=4, shuffle=shuffle, drop_last=drop_last)
        full = [(x.copy(), y.copy()) for x, y in ds.batches(24, **kw)]
        assert len(full) == ds.n_batches(24, drop_last)
        for k in [0, 1, 7, 8, 9, len(full) - 1, len(full)]:
            tail = [(x.copy(), y.copy()) for x, y in ds.batches(24, start_batch=k, **kw)]
            assert len(tail) == len(full) - k
            for (xa, ya), (xb, yb) in zip(full[k:], tail, strict=True):
                np.testing.assert_array_equal(xa, xb)
                np.testing.assert_array_equal(ya, yb)
        with pytest.raises(ValueError, match="start_batch must be in"):
            ds.batches(24, start_batch=len(full) + 1, **kw)


def test_start_batch_skips_reading_earlier_windows(ids_h5, monkeypatch):
    with H5Dataset(ids_h5, **SMALL) as ds:
        reads = []
        real = ds._x.read_direct
        monkeypatch.setattr(ds._x, "read_direct", lambda *a: reads.append(a[1]) or real(*a), raising=False)
        list(ds.batches(10, seed=0, epoch=0, start_batch=ds.n_batches(10) - 1))
        assert 0 < len(reads) <= SMALL["window_blocks"]


@pytest.mark.parametrize("scale,offset", [(1 / 255, 0.0), (0.5, -3.25), (1.0, 0.0)])
def test_batches_dtype_buffers_and_dequantization(tmp_path, scale, offset):
    path = make_ids_dataset(tmp_path / "q.h5", x_scale=scale, x_offset=offset)
    with H5Dataset(path, **SMALL) as ds, h5py.File(path) as f:
        stored = f["train/x"][...]
        by_first_values = {row.tobytes(): row for row in stored}
        buffers = set()
        for x, y in ds.batches(50, seed=2, epoch=0, shuffle=False):
            assert x.dtype == np.float32 and x.shape == (50, 12) and x.flags.c_contiguous
            assert y.dtype == np.int32 and y.shape == (50,)
            buffers.add(x.__array_interface__["data"][0])
        assert len(buffers) == 1  # one preallocated buffer per iterator
        for x, _ in ds.batches(50, seed=2, epoch=0):
            raw = np.rint((x - np.float32(offset)) / np.float32(scale)).astype(np.uint8)
            for xi, ri in zip(x, raw, strict=True):
                expected = by_first_values[ri.tobytes()].astype(np.float32) * np.float32(scale)
                if offset:
                    expected += np.float32(offset)
                np.testing.assert_array_equal(xi, expected)  # exact, not approximate


def test_float16_storage(tmp_path):
    x = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float16)
    path = write_dataset(
        tmp_path / "f.h5",
        name="f",
        train=(x, np.zeros(100, int)),
        test=(x, np.ones(100, int)),
        n_classes=2,
        input_shape=[8],
        x_scale=1.0,
        x_offset=0.0,
        source="t",
    )
    with H5Dataset(path, "test") as ds:
        ((xb, yb),) = ds.batches(100, seed=0, epoch=0, shuffle=False)
        np.testing.assert_array_equal(xb, x[import_permutation("test", 100)].astype(np.float32))
        assert yb.tolist() == [1] * 100


def test_empty_shard_and_small_shard(tmp_path):
    path = make_ids_dataset(tmp_path / "tiny.h5", n_train=3, n_test=2)
    with H5Dataset(path, "test", 4, 5) as ds:
        assert ds.n_examples == 0 and list(ds.batches(4, seed=0, epoch=0, drop_last=False)) == []
    with H5Dataset(path, "train") as ds:
        assert list(ds.batches(4, seed=0, epoch=0)) == []
        ((x, y),) = ds.batches(4, seed=0, epoch=0, drop_last=False)
        assert sorted(ids_of(x)) == [0, 1, 2]


def test_bad_arguments(ids_h5):
    with pytest.raises(ValueError, match="split must be one of"):
        H5Dataset(ids_h5, "valid")
    with pytest.raises(ValueError, match="index must be in"):
        H5Dataset(ids_h5, "train", shard=2, n_shards=2)
    with H5Dataset(ids_h5) as ds:
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            ds.batches(0, seed=0, epoch=0)
        with pytest.raises(ValueError, match="epoch must be a non-negative int"):
            ds.batches(8, seed=0, epoch=-1)


# -- validation on open -------------------------------------------------------------------


def _edit(path, fn):
    """Apply ``fn`` to the open file, then re-stamp the checksums so that only ``fn``'s problem remains."""
    with h5py.File(path, "r+") as f:
        fn(f)
        write_checksums(f)
    return path


def _replace(group, key, data):
    del group[key]
    group[key] = data


BAD_FILES = {
    "missing dataset": (lambda f: f["train"].__delitem__("y"), r"no dataset /train/y"),
    "missing group": (lambda f: f.__delitem__("train"), r"no group /train"),
    "x not 2-D": (
        lambda f: _replace(f["train"], "x", np.zeros((N_TRAIN, 3, 4), np.uint8)),
        r"/train/x has shape \(1000, 3, 4\), expected \(N, 12\)",
    ),
    "x width": (
        lambda f: _replace(f["train"], "x", np.zeros((N_TRAIN, 11), np.uint8)),
        r"/train/x has shape \(1000, 11\), expected \(N, 12\) for input_shape \[3, 4\]",
    ),
    "y not 1-D": (
        lambda f: _replace(f["train"], "y", np.zeros((N_TRAIN, 1), np.uint8)),
        r"/train/y has shape \(1000, 1\), expected \(N,\)",
    ),
    "length mismatch": (
        lambda f: _replace(f["train"], "y", np.zeros(N_TRAIN - 1, np.uint8)),
        r"length mismatch: /train/x has 1000 rows but /train/y has 999 labels",
    ),
    "label out of range": (
        lambda f: f["train/y"].__setitem__(5, 9),
        r"/train/y has labels in 0..9, expected 0..6 \(n_classes=7\)",
    ),
    "float labels": (
        lambda f: _replace(f["train"], "y", np.zeros(N_TRAIN, np.float32)),
        r"expected numeric x and integer y",
    ),
    "wrong format": (
        lambda f: f.attrs.__setitem__("format", "something-else"),
        r"format attribute is 'something-else', expected 'dbnet-dataset'",
    ),
    "wrong version": (lambda f: f.attrs.__setitem__("format_version", 1), r"format_version is 1, this dbnet reads 3"),
    "missing attr": (lambda f: f.attrs.__delitem__("x_scale"), r"missing root attribute 'x_scale'"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_is_a_data_error_naming_file_and_problem(ids_h5, case):
    edit, message = BAD_FILES[case]
    _edit(ids_h5, edit)
    with pytest.raises(DataError, match=message) as e:
        H5Dataset(ids_h5, "train").close()
    assert str(e.value).startswith(f"{ids_h5}: ") and "\n" not in str(e.value)


def test_not_hdf5_and_missing(tmp_path):
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(DataError, match=r"text.h5: not a readable HDF5 file"):
        H5Dataset(tmp_path / "text.h5")
    with pytest.raises(DataError, match=r"absent.h5: no such dataset file"):
        H5Dataset(tmp_path / "absent.h5")


def test_write_dataset_is_atomic_and_checks_inputs(tmp_path):
    args = dict(name="n", n_classes=3, input_shape=[2], x_scale=1.0, x_offset=0.0, source="")
    good = (np.zeros((4, 2), np.uint8), np.zeros(4, int))
    with pytest.raises(ValueError, match=r"train labels span 0..3, expected 0..2"):
        write_dataset(tmp_path / "o.h5", train=(good[0], np.arange(4)), test=good, **args)
    with pytest.raises(ValueError, match=r"test x has shape \(4, 3\), expected \(N, 2\)"):
        write_dataset(tmp_path / "o.h5", train=good, test=(np.zeros((4, 3)), good[1]), **args)
    assert list(tmp_path.iterdir()) == []


# -- checksums ------------------------------------------------------------------------------


def _flip_byte(path, dataset, at=100):
    """Flip one byte ``at`` bytes into the first chunk of ``dataset``, behind HDF5's back."""
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_chunk_info(0).byte_offset  # chunked: get_offset() is None
    with open(path, "r+b") as raw:
        raw.seek(offset + at)
        byte = raw.read(1)[0]
        raw.seek(offset + at)
        raw.write(bytes([byte ^ 0xFF]))


def _all_arrays(f):
    names = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def test_every_array_carries_the_crc32_of_its_bytes(tmp_path):
    path = make_ids_dataset(tmp_path / "m.h5", meta={"mean": np.arange(5, dtype=np.float32), "k": np.int64(3)})
    with h5py.File(path) as f:
        names = _all_arrays(f)
        assert sorted(names) == ["meta/k", "meta/mean", "test/x", "test/y", "train/x", "train/y"]
        for name in names:  # an independent reference: crc32 of the whole array's little-endian bytes
            a = f[name][()]
            assert f[name].attrs["crc32"] == zlib.crc32(np.asarray(a, a.dtype.newbyteorder("<")).tobytes()), name


def test_checksum_blocks_do_not_change_the_checksum(ids_h5, monkeypatch):
    with h5py.File(ids_h5) as f:
        whole = h5_mod.array_crc32(f["train/x"])
        monkeypatch.setattr(h5_mod, "_CHECK_BLOCK_BYTES", 12 * 7)  # 7 rows: blocks straddle nothing, tail of 6
        assert h5_mod.array_crc32(f["train/x"]) == whole == f["train/x"].attrs["crc32"]


@pytest.mark.parametrize("array", ["train/x", "train/y"])
def test_corrupt_byte_is_a_data_error_naming_file_and_array(ids_h5, array):
    _flip_byte(ids_h5, array, at=5)
    with pytest.raises(DataError) as e:
        H5Dataset(ids_h5, "train")
    assert str(e.value) == f"{ids_h5}: /{array}: checksum mismatch (corrupt file)"
    H5Dataset(ids_h5, "test").close()  # only the opened split's arrays are verified


def test_corrupt_meta_array(tmp_path):
    path = make_ids_dataset(tmp_path / "m.h5", meta={"mean": np.arange(5, dtype=np.float32)})
    with h5py.File(path, "r+") as f:
        f["meta/mean"][2] = 7
    for split in ("train", "test"):
        with pytest.raises(DataError, match=r"/meta/mean: checksum mismatch \(corrupt file\)"):
            H5Dataset(path, split)


def test_missing_checksum(ids_h5):
    with h5py.File(ids_h5, "r+") as f:
        del f["test/y"].attrs["crc32"]
    with pytest.raises(DataError, match=r"/test/y has no crc32 attribute: re-import"):
        H5Dataset(ids_h5, "test")


def test_a_split_is_verified_once_per_process(tmp_path, monkeypatch):
    path = make_ids_dataset(tmp_path / "once.h5")
    read = []
    real = h5_mod.array_crc32
    monkeypatch.setattr(h5_mod, "array_crc32", lambda ds: read.append(ds.name) or real(ds))
    for _ in range(3):
        H5Dataset(path, "train", shard=1, n_shards=2).close()
    assert read == ["/train/x", "/train/y"]
    make_ids_dataset(path)  # a new file at the same path (atomic rename: a new inode) is verified again
    read.clear()
    H5Dataset(path, "train").close()
    assert read == ["/train/x", "/train/y"]


def test_real_fashion_mnist_corrupt_copy_is_a_data_error(fashion_mnist_h5, tmp_path):
    copy = tmp_path / "fashion-mnist.h5"
    shutil.copy(fashion_mnist_h5, copy)  # never touch the session's file
    _flip_byte(copy, "train/x", at=784 * 3 + 400)
    with pytest.raises(DataError) as e:
        H5Dataset(copy, "train")
    assert str(e.value) == f"{copy}: /train/x: checksum mismatch (corrupt file)"
    with H5Dataset(copy, "test") as ds:
        assert ds.n_examples == 10000


def test_corrupt_cache_is_reimported_with_a_warning(fashion_mnist_h5, isolated_cache, capsys):
    isolated_cache.mkdir()
    cached = isolated_cache / "fashion-mnist.h5"
    shutil.copy(fashion_mnist_h5, cached)
    assert ensure_dataset("fashion-mnist") == cached and capsys.readouterr().err == ""  # sound: used as is
    _flip_byte(cached, "train/x", at=784 * 3 + 400)
    assert ensure_dataset("fashion-mnist") == cached
    err = capsys.readouterr().err
    assert err == f"dbnet: warning: {cached}: /train/x: checksum mismatch (corrupt file), re-importing\n"
    with H5Dataset(cached, "train") as ds, h5py.File(fashion_mnist_h5) as good, h5py.File(cached) as f:
        assert ds.n_examples == 60000
        np.testing.assert_array_equal(f["train/x"][:8], good["train/x"][:8])
    assert [p.name for p in isolated_cache.iterdir()] == ["fashion-mnist.h5"]  # no temporaries left


def test_unreadable_cache_is_reimported_with_a_warning(tmp_path, isolated_cache, monkeypatch, capsys):
    from dbnet.data import paths

    isolated_cache.mkdir()
    (isolated_cache / "fashion-mnist.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))  # truncated
    calls = []
    monkeypatch.setattr(paths, "find_source", lambda name: "src")
    monkeypatch.setattr(paths, "import_dataset", lambda *a, **kw: calls.append(a))
    ensure_dataset("fashion-mnist")
    assert calls == [("fashion-mnist", "src", isolated_cache / "fashion-mnist.h5")]
    assert capsys.readouterr().err.endswith("fashion-mnist.h5: not a readable HDF5 file, re-importing\n")


# -- the real data ------------------------------------------------------------------------


def test_real_fashion_mnist_epoch(fashion_mnist_h5):
    with H5Dataset(fashion_mnist_h5) as ds:
        assert ds.n_examples == 60000 and ds.n_inputs == 784 and ds.input_shape == (28, 28)
        labels = np.concatenate([y.copy() for _, y in ds.batches(128, seed=0, epoch=0, drop_last=False)])
        assert np.bincount(labels).tolist() == [6000] * 10
        x, _ = next(ds.batches(128, seed=0, epoch=0))
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.99


def test_info_command(fashion_mnist_h5, capsys):
    parser = argparse.ArgumentParser(prog="dbnet")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "info", str(fashion_mnist_h5)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for text in [
        "name: fashion-mnist",
        "classes: 10",
        "[28, 28] (784 inputs)",
        "train: 60000 examples",
        "(60000, 784) uint8",
        "test: 10000 examples",
        "y (10000,) uint8",
        "MiB",
    ]:
        assert text in out, text
