"""Where raw datasets are found and where their imported HDF5 files are cached.

Raw files are searched, in order, in ``$DBNET_DATA/<name>``,
``<repo>/../shared/datasets/<name>``, ``./../shared/datasets/<name>``,
``<cache>/sources/<name>`` (where ``dbnet data download`` puts them) and
Debian's ``/usr/share/datasets/<name>``.  Imported files live in the cache
directory (``$DBNET_CACHE``, else ``~/.cache/dbnet``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dbnet
from dbnet.data.h5 import FORMAT_VERSION, SPLITS, H5Dataset
from dbnet.errors import DataError

DATASETS = ("fashion-mnist", "mnist", "fsdd")
_IDX_BASES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_HOW_TO_GET = {
    "fashion-mnist": "`apt-get install dataset-fashion-mnist`, "
    "or `dbnet data download fashion-mnist` where there is network",
    "mnist": "`dbnet data download mnist` where there is network",
    "fsdd": "`dbnet data download fsdd` where there is network",
}


def check_name(name: str) -> str:
    """``name`` if it is a known dataset, else :class:`DataError` listing the known ones."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    return name


def cache_dir() -> Path:
    """Where imported datasets live: ``$DBNET_CACHE``, else ``~/.cache/dbnet``."""
    env = os.environ.get("DBNET_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dbnet"


def default_download_dir(name: str) -> Path:
    """Where ``dbnet data download NAME`` puts raw files: ``$DBNET_DATA/<name>``, else ``<cache>/sources/<name>``."""
    env = os.environ.get("DBNET_DATA")
    return Path(env) / name if env else cache_dir() / "sources" / name


def candidate_dirs(name: str) -> list[Path]:
    """The directories :func:`find_source` searches for ``name``, in order."""
    check_name(name)
    dirs = []
    if os.environ.get("DBNET_DATA"):
        dirs.append(Path(os.environ["DBNET_DATA"]) / name)
    repo = Path(dbnet.__file__).resolve().parents[1]
    dirs += [repo.parent / "shared" / "datasets" / name, Path.cwd().parent / "shared" / "datasets" / name]
    dirs += [cache_dir() / "sources" / name, Path("/usr/share/datasets") / name]
    unique = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _has_dataset(name: str, folder: Path) -> bool:
    if name == "fsdd":
        return any((folder / "recordings").glob("*.wav"))
    return all((folder / f"{b}.gz").is_file() or (folder / b).is_file() for b in _IDX_BASES)


def find_source(name: str) -> Path:
    """The directory holding the raw files of dataset ``name``.

    ``name`` is one of ``fashion-mnist``, ``mnist``, ``fsdd``.  Raises
    :class:`DataError` listing the places looked and how to get the data.
    """
    dirs = candidate_dirs(name)
    for folder in dirs:
        if _has_dataset(name, folder):
            return folder
    looked = ", ".join(str(d) for d in dirs)
    raise DataError(
        f"dataset {name} not found (looked in {looked}): get it with {_HOW_TO_GET[name]}, or set DBNET_DATA"
    )


def dataset_path(name: str, *, segments: int | None = None) -> Path:
    """The cache path of ``name``'s imported HDF5 file, e.g. ``<cache>/fsdd-seg5.h5``."""
    check_name(name)
    if segments is not None and name != "fsdd":
        raise DataError(f"segments={segments} applies only to fsdd, not {name}")
    return cache_dir() / (f"{name}.h5" if segments is None else f"{name}-seg{segments}.h5")


def import_dataset(
    name: str, src_dir: str | os.PathLike, out_h5: str | os.PathLike, *, segments: int | None = None
) -> Path:
    """Import raw files of ``name`` from ``src_dir`` into ``out_h5`` (atomically); returns ``out_h5``."""
    check_name(name)
    if name == "fsdd":
        from dbnet.data.fsdd import import_fsdd

        return import_fsdd(src_dir, out_h5, segments=segments)
    if segments is not None:
        raise DataError(f"segments={segments} applies only to fsdd, not {name}")
    from dbnet.data.idx import import_idx_dataset

    return import_idx_dataset(src_dir, out_h5, name)


def ensure_dataset(name: str, *, segments: int | None = None) -> Path:
    """The imported HDF5 file of ``name`` in the cache, importing it from :func:`find_source` if needed.

    A cached file is imported again when it is absent or of an older
    ``format_version`` (silently), and when it is unreadable, fails
    validation or a checksum (with one line on stderr: ``dbnet: warning:
    <file>: /train/x: checksum mismatch (corrupt file), re-importing``).  The
    check verifies both splits (see :func:`dbnet.data.h5.verify_arrays`), so a
    later :class:`~dbnet.data.H5Dataset` of the file in this process does not
    read it again.

    Safe when several processes call it at once: the check is read-only, each
    import goes to a temporary file renamed over the cache path; the import
    is deterministic, so whichever rename wins gives the same file, and a
    process that finds a sound final file uses it.
    """
    out = dataset_path(name, segments=segments)
    problem = _cache_problem(out)
    if problem is not None:
        if problem:
            print(f"dbnet: warning: {problem}, re-importing", file=sys.stderr, flush=True)
        import_dataset(name, find_source(name), out, segments=segments)
    return out


def _cache_problem(path: Path) -> str | None:
    """None if ``path`` is a sound import of this format; "" if absent or older; else what is wrong with it."""
    if not path.is_file():
        return ""
    version = _cached_version(path)
    if version is None:
        return f"{path}: not a readable HDF5 file"
    if version != FORMAT_VERSION:
        return ""
    try:
        for split in SPLITS:
            H5Dataset(path, split).close()
    except DataError as e:
        return str(e)
    return None


def _cached_version(path: Path) -> int | None:
    """The ``format_version`` of a cached import (None if unreadable): older ones are re-imported."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(f.attrs.get("format_version", -1))
    except (OSError, ValueError):
        return None
