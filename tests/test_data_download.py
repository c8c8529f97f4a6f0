"""Finding, caching and downloading raw datasets (over file:// URLs: there is no network here)."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os

import numpy as np
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import dbnet.data.paths as paths
from dbnet.data import cache_dir, dataset_path, download, ensure_dataset, find_source
from dbnet.data.commands import register
from dbnet.data.download import FSDD_ARCHIVE, FSDD_RECORDINGS_SHA256, recordings_digest
from dbnet.errors import DataError

REPO = Path(__file__).resolve().parents[1]
FASHION_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


def _mirror(tmp_path, shared_datasets):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in FASHION_FILES:
        shutil.copy(shared_datasets / "fashion-mnist" / name, mirror / name)
    return mirror


def test_embedded_fsdd_digest_matches_shared_sums(shared_datasets):
    lines = (shared_datasets / "fsdd" / "SHA256SUMS").read_text().splitlines(keepends=True)
    assert hashlib.sha256("".join(sorted(lines)).encode()).hexdigest() == FSDD_RECORDINGS_SHA256


def test_download_fashion_mnist_from_file_url(tmp_path, shared_datasets):
    mirror = _mirror(tmp_path, shared_datasets)
    dest = download("fashion-mnist", tmp_path / "dest", base_url=mirror.as_uri() + "/")
    for name in FASHION_FILES:
        assert (dest / name).read_bytes() == (mirror / name).read_bytes()
    shutil.rmtree(mirror)  # valid files already there are kept, nothing is fetched
    assert download("fashion-mnist", dest, base_url=mirror.as_uri() + "/") == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted(FASHION_FILES)  # no temporaries left


def test_download_checksum_mismatch_keeps_nothing(tmp_path, shared_datasets):
    mirror = _mirror(tmp_path, shared_datasets)
    labels = bytearray(gzip.decompress((mirror / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    labels[100] = (labels[100] + 1) % 10  # a valid IDX file, one label changed
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(labels)))
    dest = tmp_path / "dest"
    with pytest.raises(
        DataError, match=r"t10k-labels-idx1-ubyte.gz: checksum mismatch: SHA-256 of the decompressed data is"
    ):
        download("fashion-mnist", dest, base_url=mirror.as_uri() + "/")
    assert not (dest / "t10k-labels-idx1-ubyte.gz").exists()
    assert not any(p.name.startswith(".") for p in dest.iterdir())


def test_download_mnist_size_check(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + bytes(100))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: checksum mismatch: 102 bytes, expected 9912422"):
        download("mnist", tmp_path / "dest", base_url=mirror.as_uri() + "/")


def test_download_without_network_is_a_clear_error(tmp_path):
    with pytest.raises(
        DataError, match=r"cannot download http://127.0.0.1:9/train-images-idx3-ubyte.gz: .*no network\?"
    ):
        download("fashion-mnist", tmp_path, base_url="http://127.0.0.1:9/", timeout=5)
    with pytest.raises(DataError, match=r"cannot download file://.*/missing/train-images-idx3-ubyte.gz"):
        download("fashion-mnist", tmp_path, base_url=(tmp_path / "missing").as_uri() + "/")


def _fsdd_archive(folder: Path, wavs: list[Path], tweak: bool = False) -> Path:
    folder.mkdir(exist_ok=True)
    top = "free-spoken-digit-dataset-master"
    with tarfile.open(folder / FSDD_ARCHIVE, "w:gz", compresslevel=1) as tar:
        for i, wav in enumerate(wavs):
            info = tarfile.TarInfo(f"{top}/recordings/{wav.name}")
            data = wav.read_bytes()
            if tweak and i == 0:
                data = data[:-1] + bytes([data[-1] ^ 1])
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        readme = tarfile.TarInfo(f"{top}/README.md")
        tar.addfile(readme)
    return folder


def test_download_fsdd_from_file_url(tmp_path, shared_datasets, capsys):
    wavs = sorted((shared_datasets / "fsdd" / "recordings").glob("*.wav"))
    mirror = _fsdd_archive(tmp_path / "mirror", wavs)
    parser = argparse.ArgumentParser(prog="dbnet")
    register(parser.add_subparsers(dest="command"))
    dest = tmp_path / "dest"
    args = parser.parse_args(["data", "download", "fsdd", "--dest", str(dest), "--base-url", mirror.as_uri() + "/"])
    assert args.func(args) == 0 and "downloaded fsdd" in capsys.readouterr().out
    assert len(list((dest / "recordings").glob("*.wav"))) == 3000
    assert recordings_digest(dest / "recordings") == FSDD_RECORDINGS_SHA256
    expected = sorted((shared_datasets / "fsdd" / "SHA256SUMS").read_text().splitlines())
    assert (dest / "SHA256SUMS").read_text().splitlines() == expected
    assert sorted(p.name for p in dest.iterdir()) == ["SHA256SUMS", "recordings"]


def test_download_fsdd_checksum_mismatch(tmp_path, shared_datasets):
    wavs = sorted((shared_datasets / "fsdd" / "recordings").glob("*.wav"))[:5]
    mirror = _fsdd_archive(tmp_path / "mirror", wavs, tweak=True)
    with pytest.raises(
        DataError, match=r"master.tar.gz: checksum mismatch: the 5 recordings digest to [0-9a-f]{64}, expected 782ba310"
    ):
        download("fsdd", tmp_path / "dest", base_url=mirror.as_uri() + "/")
    assert list((tmp_path / "dest").iterdir()) == []


# -- where data is found and cached -------------------------------------------------------


def test_find_source_default_is_shared_datasets(isolated_cache, shared_datasets):
    assert find_source("fashion-mnist").resolve() == (shared_datasets / "fashion-mnist").resolve()
    assert find_source("fsdd").resolve() == (shared_datasets / "fsdd").resolve()


def test_find_source_prefers_dbnet_data(isolated_cache, tmp_path, shared_datasets, monkeypatch):
    mine = tmp_path / "mine" / "fashion-mnist"
    shutil.copytree(shared_datasets / "fashion-mnist", mine)
    monkeypatch.setenv("DBNET_DATA", str(tmp_path / "mine"))
    assert find_source("fashion-mnist") == mine
    assert find_source("fsdd").resolve() == (shared_datasets / "fsdd").resolve()  # falls through


def test_find_source_missing_lists_places_and_fixes(monkeypatch, tmp_path):
    places = [tmp_path / "a" / "fashion-mnist", tmp_path / "b" / "fashion-mnist"]
    places[1].mkdir(parents=True)  # exists but holds nothing
    monkeypatch.setattr(paths, "candidate_dirs", lambda name: places)
    with pytest.raises(DataError) as e:
        find_source("fashion-mnist")
    message = str(e.value)
    assert all(str(p) in message for p in places)
    assert "apt-get install dataset-fashion-mnist" in message and "dbnet data download fashion-mnist" in message


def test_candidate_dirs_order(isolated_cache, monkeypatch):
    monkeypatch.setenv("DBNET_DATA", "/data/here")
    dirs = paths.candidate_dirs("mnist")
    assert dirs[0] == Path("/data/here/mnist") and dirs[-1] == Path("/usr/share/datasets/mnist")
    repo = Path(paths.dbnet.__file__).resolve().parents[1]
    assert dirs[1] == repo.parent / "shared" / "datasets" / "mnist"
    assert isolated_cache / "sources" / "mnist" in dirs


def test_cache_paths(isolated_cache, monkeypatch):
    assert cache_dir() == isolated_cache
    assert dataset_path("fsdd") == isolated_cache / "fsdd.h5"
    assert dataset_path("fsdd", segments=5) == isolated_cache / "fsdd-seg5.h5"
    with pytest.raises(DataError, match=r"segments=5 applies only to fsdd, not mnist"):
        dataset_path("mnist", segments=5)
    with pytest.raises(DataError, match=r"unknown dataset 'cifar': expected one of fashion-mnist, mnist, fsdd"):
        ensure_dataset("cifar")
    monkeypatch.delenv("DBNET_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "dbnet"


def _tiny_dataset(path):
    from dbnet.data import write_dataset

    x, y = np.zeros((4, 2, 2), np.uint8), np.array([0, 1, 0, 1], np.uint8)
    write_dataset(path, name="fashion-mnist", train=(x, y), test=(x, y), n_classes=2, input_shape=(2, 2),
                  x_scale=1.0, x_offset=0.0, source="test")


def test_ensure_dataset_uses_existing_file(isolated_cache, monkeypatch):
    isolated_cache.mkdir()
    _tiny_dataset(isolated_cache / "fashion-mnist.h5")
    monkeypatch.setattr(paths, "find_source", lambda name: pytest.fail("should not import"))
    assert ensure_dataset("fashion-mnist") == isolated_cache / "fashion-mnist.h5"


def test_ensure_dataset_reimports_an_older_format(isolated_cache, monkeypatch):
    import h5py

    isolated_cache.mkdir()
    old = isolated_cache / "fashion-mnist.h5"
    _tiny_dataset(old)
    with h5py.File(old, "r+") as f:
        f.attrs["format_version"] = 1
    calls = []
    monkeypatch.setattr(paths, "find_source", lambda name: "src")
    monkeypatch.setattr(paths, "import_dataset", lambda *a, **kw: calls.append(a))
    ensure_dataset("fashion-mnist")
    assert calls == [("fashion-mnist", "src", old)]


def test_ensure_dataset_imports_fsdd_subset(isolated_cache, fsdd_subset, monkeypatch):
    monkeypatch.setattr(paths, "find_source", lambda name: fsdd_subset)
    path = ensure_dataset("fsdd", segments=2)
    assert path == isolated_cache / "fsdd-seg2.h5" and path.is_file()
    assert [p.name for p in isolated_cache.iterdir()] == ["fsdd-seg2.h5"]  # no temporaries left


def test_ensure_dataset_concurrent_processes(tmp_path, fsdd_subset):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "fsdd").symlink_to(fsdd_subset)
    env = {**os.environ, "DBNET_DATA": str(tmp_path / "data"), "DBNET_CACHE": str(tmp_path / "cache")}
    code = (
        "from dbnet.data import ensure_dataset, H5Dataset; p = ensure_dataset('fsdd'); print(H5Dataset(p).n_examples)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0] and len(set(outs)) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["fsdd.h5"]
