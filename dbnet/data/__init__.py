"""Datasets: raw files -> one HDF5 layout -> sharded, shuffled float32 batches.

Typical use::

    path = ensure_dataset("fashion-mnist")          # imports into the cache once
    with H5Dataset(path, "train", shard=k, n_shards=n) as ds:
        for x, y in ds.batches(128, seed=0, epoch=e):   # x (128, 784) float32, y (128,) int32
            ...

Every stored array carries a crc32 checksum, verified when a split is opened
(once per process); a corrupt cache file is re-imported by ``ensure_dataset``.
"""

from dbnet.data.download import download
from dbnet.data.fsdd import import_fsdd, log_mel
from dbnet.data.h5 import H5Dataset, write_dataset
from dbnet.data.idx import import_idx_dataset, read_idx, write_idx
from dbnet.data.paths import DATASETS, cache_dir, dataset_path, ensure_dataset, find_source, import_dataset

__all__ = [
    "DATASETS",
    "H5Dataset",
    "cache_dir",
    "dataset_path",
    "download",
    "ensure_dataset",
    "find_source",
    "import_dataset",
    "import_fsdd",
    "import_idx_dataset",
    "log_mel",
    "read_idx",
    "write_dataset",
    "write_idx",
]
