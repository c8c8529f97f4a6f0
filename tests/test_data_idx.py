"""IDX reading/writing, its error messages, and the import of MNIST-style datasets."""

from __future__ import annotations

import gzip

import h5py
import numpy as np

from dbnet.data.h5 import FORMAT_VERSION, import_permutation
import pytest

from dbnet.data import H5Dataset, import_idx_dataset, read_idx, write_idx
from dbnet.errors import DataError


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32])
def test_round_trip(tmp_path, suffix, dtype):
    a = (np.arange(5 * 4 * 3) - 7).reshape(5, 4, 3).astype(dtype)
    if dtype == np.uint8:
        a = np.arange(60, dtype=np.uint8).reshape(5, 4, 3)
    path = tmp_path / f"a-idx3-ubyte{suffix}"
    write_idx(path, a)
    b = read_idx(path)
    assert b.dtype == dtype and b.shape == (5, 4, 3) and b.flags.writeable
    np.testing.assert_array_equal(a, b)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")


def test_header_layout(tmp_path):
    write_idx(tmp_path / "l", np.array([1, 2, 3], np.uint8))
    assert (tmp_path / "l").read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3])


def _raw(tmp_path, data: bytes, name="x-idx3-ubyte", gz=False):
    path = tmp_path / (name + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


HEADER = bytes([0, 0, 8, 3, 0, 0, 0, 5, 0, 0, 0, 4, 0, 0, 0, 3])  # 5x4x3 uint8


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_data(tmp_path, gz):
    path = _raw(tmp_path, HEADER + bytes(50), gz=gz)
    with pytest.raises(DataError, match=r"truncated IDX file: header says 5x4x3 = 60 bytes of data, found 50") as e:
        read_idx(path)
    assert str(e.value).startswith(str(path))


def test_trailing_garbage(tmp_path):
    path = _raw(tmp_path, HEADER + bytes(61))
    with pytest.raises(DataError, match=r"x-idx3-ubyte: trailing garbage.*60 bytes of data, found 61 \(1 extra\)"):
        read_idx(path)


@pytest.mark.parametrize("head", [b"\x08\x03\x00\x00", b"\x00\x00\x07\x01", b"PK\x03\x04"])
def test_wrong_magic(tmp_path, head):
    path = _raw(tmp_path, head + bytes(64))
    with pytest.raises(DataError, match=r"x-idx3-ubyte: not an IDX file: bad magic number 0x"):
        read_idx(path)


def test_truncated_header(tmp_path):
    with pytest.raises(DataError, match=r"truncated IDX file: header of 3 dimensions needs 16 bytes, found 10"):
        read_idx(_raw(tmp_path, HEADER[:10]))
    with pytest.raises(DataError, match=r"too short for the 4-byte magic"):
        read_idx(_raw(tmp_path, b"\x00\x00"))


def test_truncated_and_corrupt_gzip(tmp_path):
    good = gzip.compress(HEADER + bytes(range(60)))
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"x-idx3-ubyte.gz: truncated or corrupt gzip data"):
        read_idx(path)
    path.write_bytes(good[:-8] + bytes(8))  # wrong CRC and length
    with pytest.raises(DataError, match=r"x-idx3-ubyte.gz: truncated or corrupt gzip data"):
        read_idx(path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"truncated or corrupt gzip data"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope-idx1-ubyte.gz: no such file"):
        read_idx(tmp_path / "nope-idx1-ubyte.gz")


def _idx_dir(tmp_path, n_train=30, n_test=10, train_labels=None, gz=True):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_train, 4, 5), dtype=np.uint8))
    labels = np.arange(n_train) % 10 if train_labels is None else train_labels
    write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", np.asarray(labels, np.uint8))
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_test, 4, 5), dtype=np.uint8))
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", (np.arange(n_test) % 10).astype(np.uint8))
    return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_import_small(tmp_path, gz):
    (tmp_path / "src").mkdir()
    src = _idx_dir(tmp_path / "src", gz=gz)
    out = import_idx_dataset(src, tmp_path / "small.h5", "mnist")
    with H5Dataset(out, "test") as ds:
        assert (ds.name, ds.n_classes, ds.input_shape, ds.n_examples, ds.x_dtype) == ("mnist", 10, (4, 5), 10, np.uint8)
    with h5py.File(out) as f:  # both splits are stored in a fixed shuffled order
        test_x = read_idx(next(src.glob("t10k-images*"))).reshape(10, 20)
        np.testing.assert_array_equal(f["test/x"][...], test_x[import_permutation("test", 10)])
        assert sorted(f["train/y"][...].tolist()) == sorted((np.arange(30) % 10).tolist())


def test_import_label_out_of_range(tmp_path):
    labels = np.arange(30) % 10
    labels[3] = 12
    src = _idx_dir(tmp_path, train_labels=labels)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: label 12 at index 3 is out of range 0..9"):
        import_idx_dataset(src, tmp_path / "out.h5", "mnist")
    assert not (tmp_path / "out.h5").exists()


def test_import_count_mismatch(tmp_path):
    src = _idx_dir(tmp_path, train_labels=np.zeros(29))
    with pytest.raises(
        DataError, match=r"train-labels-idx1-ubyte.gz: 29 labels but train-images-idx3-ubyte.gz has 30 images"
    ):
        import_idx_dataset(src, tmp_path / "out.h5", "mnist")


def test_import_missing_file(tmp_path):
    src = _idx_dir(tmp_path)
    (src / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing IDX file t10k-labels-idx1-ubyte.gz"):
        import_idx_dataset(src, tmp_path / "out.h5", "mnist")


def test_import_wrong_dtype(tmp_path):
    src = _idx_dir(tmp_path)
    write_idx(src / "train-images-idx3-ubyte.gz", np.zeros((30, 4, 5), np.float32))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: expected images \(N, rows, cols\) uint8"):
        import_idx_dataset(src, tmp_path / "out.h5", "mnist")


def test_real_fashion_mnist(fashion_mnist_h5, shared_datasets):
    with h5py.File(fashion_mnist_h5) as f:
        assert f.attrs["format"] == "dbnet-dataset" and f.attrs["format_version"] == FORMAT_VERSION
        assert f.attrs["name"] == "fashion-mnist" and f.attrs["n_classes"] == 10
        assert list(f.attrs["input_shape"]) == [28, 28]
        assert f.attrs["x_scale"] == np.float32(1 / 255) and f.attrs["x_offset"] == 0
        for split, n in (("train", 60000), ("test", 10000)):
            x, y = f[split]["x"], f[split]["y"]
            assert x.shape == (n, 784) and x.dtype == np.uint8 and x.chunks[1] == 784
            assert y.shape == (n,) and y.dtype == np.uint8
            assert np.bincount(y[...], minlength=10).tolist() == [n // 10] * 10
        test_x = read_idx(shared_datasets / "fashion-mnist" / "t10k-images-idx3-ubyte.gz")
        np.testing.assert_array_equal(f["test/x"][...], test_x.reshape(10000, 784)[import_permutation("test", 10000)])
        train_y = f["train/y"][...]
        assert not np.array_equal(train_y, read_idx(shared_datasets / "fashion-mnist" / "train-labels-idx1-ubyte.gz"))


def test_real_fashion_mnist_shards_are_class_balanced(fashion_mnist_h5):
    for k in range(4):
        with H5Dataset(fashion_mnist_h5, "train", shard=k, n_shards=4) as ds:
            lo, hi = ds.rows
            with h5py.File(fashion_mnist_h5) as f:
                counts = np.bincount(f["train/y"][lo:hi], minlength=10)
            assert ds.n_examples == 15000 and np.all(np.abs(counts - 1500) < 200), counts
