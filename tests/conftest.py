"""Shared fixtures: the real datasets in ../shared/datasets, imported at most once per session."""

from __future__ import annotations

import dbnet  # noqa: F401 - first, so its BLAS/OpenMP settings apply before numpy loads (when it can)

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """``../shared/datasets`` (always present here and in CI; a failure, not a skip, if missing)."""
    for name in ("fashion-mnist", "fsdd"):
        if not (SHARED_DATASETS / name).is_dir():
            pytest.fail(f"real dataset {SHARED_DATASETS / name} is missing: the tests need ../shared/datasets")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def fashion_mnist_h5(shared_datasets, tmp_path_factory) -> Path:
    """The real Fashion-MNIST imported once per session by ``ensure_dataset`` into a temporary cache."""
    from dbnet.data import ensure_dataset

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DBNET_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("DBNET_DATA", raising=False)
        return ensure_dataset("fashion-mnist")


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """A fresh ``DBNET_CACHE`` (and no ``DBNET_DATA``) for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DBNET_CACHE", str(cache))
    monkeypatch.delenv("DBNET_DATA", raising=False)
    return cache


@pytest.fixture(scope="session")
def fsdd_subset(shared_datasets, tmp_path_factory) -> Path:
    """40 real FSDD recordings (every digit; takes 0, 1 test and 5, 6 train; mixed speakers) in ``<dir>/recordings``."""
    speakers = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    root = tmp_path_factory.mktemp("fsdd")
    (root / "recordings").mkdir()
    for digit in range(10):
        for take in (0, 1, 5, 6):
            name = f"{digit}_{speakers[(digit + take) % 6]}_{take}.wav"
            shutil.copy(shared_datasets / "fsdd" / "recordings" / name, root / "recordings" / name)
    return root
