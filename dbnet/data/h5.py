"""The one HDF5 layout for every dbnet dataset, and its streaming, sharded reader.

Layout (``format_version`` 3)::

    /            attrs: format="dbnet-dataset", format_version=3, name, n_classes,
                        input_shape (e.g. [28, 28] or [440]), x_scale, x_offset, source
    /train/x     (N, n_inputs) uint8 or float16, chunked in blocks of rows;  attrs: crc32
    /train/y     (N,) small unsigned int, labels in 0..n_classes-1;          attrs: crc32
    /test/x, /test/y   the same
    /meta/...    optional extra arrays (e.g. fsdd's feature normalisation);  attrs: crc32

A stored value ``s`` means the input ``float32(s) * x_scale + x_offset``.
Both splits are shuffled once at import (train with seed 0, test with seed
1), so the contiguous shards of :func:`dbnet.partition.balanced_range` are
class-balanced and any prefix of the test split (``train.eval_examples``) is
a fair sample.  (Version 1 left the test split in source order.)

Every array carries ``crc32``: ``zlib.crc32`` (uint32) of its elements in C
order as little-endian bytes, i.e. of
``np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()``.
:class:`H5Dataset` verifies the arrays of the split it opens (and ``/meta``)
and raises :class:`DataError` on a mismatch; see :func:`verify_arrays`.
Version 2 files (no checksums) are refused; :func:`dbnet.data.ensure_dataset`
re-imports its cached files when they are of an older version or corrupt.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from dbnet.atomic import atomic_path
from dbnet.errors import DataError
from dbnet.partition import balanced_range

FORMAT = "dbnet-dataset"
FORMAT_VERSION = 3
SPLITS = ("train", "test")
CHUNK_ROWS = 1024
_REQUIRED_ATTRS = ("name", "n_classes", "input_shape", "x_scale", "x_offset")
CHECKSUM_ATTR = "crc32"
_CHECK_BLOCK_BYTES = 4 << 20  # bytes read per step while checksumming


def _label_dtype(n_classes: int) -> np.dtype:
    if n_classes <= 1 << 8:
        return np.dtype(np.uint8)
    return np.dtype(np.uint16) if n_classes <= 1 << 16 else np.dtype(np.int32)


def import_permutation(split: str, n: int) -> np.ndarray:
    """The order in which ``split``'s ``n`` source examples are stored: stored row i is source row perm[i]."""
    return np.random.default_rng(SPLITS.index(split)).permutation(n)


def array_crc32(ds: h5py.Dataset) -> int:
    """``zlib.crc32`` of the stored array ``ds``: its elements in C order as little-endian bytes.

    Reads blocks of whole chunks of rows (about 4 MiB) into one reused
    buffer, so memory stays bounded and nothing but that buffer is copied.
    """
    dtype = ds.dtype.newbyteorder("<")
    if ds.ndim == 0 or ds.size == 0:
        return zlib.crc32(np.ascontiguousarray(ds[()], dtype).tobytes())
    rows = ds.shape[0]
    step = max(1, _CHECK_BLOCK_BYTES // (ds.size // rows * dtype.itemsize))
    if ds.chunks:
        step = max(ds.chunks[0], step - step % ds.chunks[0])  # whole chunks: each is read once
    step = min(step, rows)
    buf = np.empty((step, *ds.shape[1:]), dtype)
    crc = 0
    for a in range(0, rows, step):
        n = min(step, rows - a)
        ds.read_direct(buf, np.s_[a : a + n], np.s_[0:n])
        crc = zlib.crc32(buf[:n], crc)
    return crc


def write_checksums(f: h5py.File) -> None:
    """Set the ``crc32`` attribute of every array in ``f`` (open for writing) from what it stores."""
    arrays: list[h5py.Dataset] = []
    f.visititems(lambda _, obj: arrays.append(obj) if isinstance(obj, h5py.Dataset) else None)
    for ds in arrays:
        ds.attrs[CHECKSUM_ATTR] = np.uint32(array_crc32(ds))


# (device, inode, size, mtime_ns, array name) of arrays this process has verified.
_verified: set[tuple] = set()


def _identity(f: h5py.File) -> tuple | None:
    """What identifies the open file's contents on disk, or None if unknown (then nothing is cached)."""
    try:
        st = os.fstat(f.id.get_vfd_handle())
    except (OSError, TypeError, ValueError):
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def verify_arrays(f: h5py.File, names: list[str], where: str | os.PathLike) -> None:
    """Check the ``crc32`` attribute of each array ``names`` (e.g. ``"/train/x"``) of the open file ``f``.

    Raises :class:`DataError` ``"<where>: /train/x: checksum mismatch
    (corrupt file)"`` on the first mismatch, and a :class:`DataError` if an
    array has no checksum or cannot be read.  Read-only, so any number of
    processes may verify one file at once.  An array is read once per process:
    one verified from the same file (device, inode, size and modification
    time unchanged) is not read again, so repeated opens of a split cost
    nothing.  Verifying Fashion-MNIST's train split (47 MB) takes 20-35 ms
    on one AMD EPYC core with the file in the page cache (half of it crc32 at
    about 3 GB/s, half the HDF5 reads); from a cold disk, add one read of it.
    """
    ident = _identity(f)
    for name in names:
        key = None if ident is None else (*ident, name)
        if key is not None and key in _verified:
            continue
        ds = f[name]
        stored = ds.attrs.get(CHECKSUM_ATTR)
        if stored is None:
            raise DataError(f"{where}: {name} has no {CHECKSUM_ATTR} attribute: re-import the dataset")
        try:
            crc = array_crc32(ds)
        except OSError as e:
            raise DataError(f"{where}: {name}: cannot be read, corrupt file ({e})") from None
        if crc != int(stored):
            raise DataError(f"{where}: {name}: checksum mismatch (corrupt file)")
        if key is not None:
            _verified.add(key)


def write_dataset(
    out_path: str | os.PathLike,
    *,
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    n_classes: int,
    input_shape: tuple[int, ...] | list[int],
    x_scale: float,
    x_offset: float,
    source: str,
    meta: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a dataset in the dbnet layout, atomically.

    ``train`` and ``test`` are ``(x, y)`` with ``x: (N, *input_shape)`` or
    ``(N, n_inputs)`` in its storage dtype (uint8 or float16, kept as given)
    and ``y: (N,)`` integer labels in ``0..n_classes-1`` (stored as the
    smallest unsigned type that holds them).  Rows are permuted once (see
    :func:`import_permutation`).  ``meta`` arrays go to ``/meta``.  Every
    array gets its ``crc32`` attribute, computed from what HDF5 stored.
    """
    input_shape = [int(d) for d in input_shape]
    n_inputs = math.prod(input_shape)
    splits = {}
    for split, (x, y) in (("train", train), ("test", test)):
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim < 2 or math.prod(x.shape[1:]) != n_inputs:
            raise ValueError(
                f"write_dataset: {split} x has shape {x.shape}, expected (N, {n_inputs}) for input_shape {input_shape}"
            )
        x = x.reshape(len(x), n_inputs)
        if y.shape != (len(x),) or y.dtype.kind not in "ui":
            raise ValueError(f"write_dataset: {split} y has shape {y.shape} {y.dtype}, expected ({len(x)},) integer")
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"write_dataset: {split} labels span {y.min()}..{y.max()}, expected 0..{n_classes - 1}")
        perm = import_permutation(split, len(x))
        x, y = x[perm], y[perm]
        splits[split] = (x, y.astype(_label_dtype(n_classes)))

    out_path = Path(out_path)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            name=name,
            n_classes=int(n_classes),
            input_shape=np.array(input_shape, dtype=np.int64),
            x_scale=np.float32(x_scale),
            x_offset=np.float32(x_offset),
            source=source,
        )
        for split, (x, y) in splits.items():
            g = f.create_group(split)
            rows = max(1, min(len(x), CHUNK_ROWS))
            g.create_dataset("x", data=x, chunks=(rows, n_inputs))
            g.create_dataset("y", data=y, chunks=(rows,))
        for key, value in (meta or {}).items():
            f.create_dataset(f"meta/{key}", data=np.asarray(value))
        write_checksums(f)
    return out_path


class H5Dataset:
    """One shard of one split of a dbnet HDF5 dataset, read as a stream of batches.

    ``H5Dataset(path, split="train", shard=0, n_shards=1)`` owns the rows
    ``[lo, hi) = balanced_range(N, n_shards, shard)`` of the split: shards are
    disjoint and cover it.  The layout is validated on open, and the
    checksums of the split's arrays and of ``/meta`` are verified (once per
    process, see :func:`verify_arrays`); any problem is a :class:`DataError`
    naming the file.  Use as a context manager (or call :meth:`close`) to
    close the HDF5 file.

    ``block_rows`` (rows per HDF5 read) and ``window_blocks`` (blocks shuffled
    together) bound an iterator's memory to ``window_blocks * block_rows``
    stored rows plus one batch, and are part of what defines the shuffled order.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "train",
        shard: int = 0,
        n_shards: int = 1,
        *,
        block_rows: int = 4096,
        window_blocks: int = 4,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if block_rows < 1 or window_blocks < 1:
            raise ValueError(f"block_rows and window_blocks must be >= 1, got {block_rows}, {window_blocks}")
        self.path, self.split = Path(path), split
        self.shard, self.n_shards = shard, n_shards
        self.block_rows, self.window_blocks = block_rows, window_blocks
        if not self.path.is_file():
            raise DataError(
                f"{self.path}: no such dataset file (create it with `dbnet data import NAME --out {self.path}`)"
            )
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as e:
            raise DataError(f"{self.path}: not a readable HDF5 file ({e})") from None
        try:
            self._open()
            self._lo, self._hi = balanced_range(len(self._y), n_shards, shard)
        except OSError as e:  # HDF5 metadata that cannot be read: a damaged file
            self._file.close()
            raise DataError(f"{self.path}: unreadable HDF5 data, corrupt file ({e})") from None
        except BaseException:
            self._file.close()
            raise

    def _fail(self, problem: str) -> DataError:
        return DataError(f"{self.path}: {problem}")

    def _open(self) -> None:
        attrs = self._file.attrs
        fmt = attrs.get("format")
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        if fmt != FORMAT:
            raise self._fail(
                f"format attribute is {fmt!r}, expected {FORMAT!r}: "
                "not a dbnet dataset (make one with `dbnet data import`)"
            )
        version = attrs.get("format_version")
        if version != FORMAT_VERSION:
            version = version.item() if isinstance(version, np.generic) else version
            raise self._fail(f"format_version is {version!r}, this dbnet reads {FORMAT_VERSION}: re-import it")
        for key in _REQUIRED_ATTRS:
            if key not in attrs:
                raise self._fail(f"missing root attribute {key!r}")
        self.name = str(attrs["name"])
        self.n_classes = int(attrs["n_classes"])
        self.input_shape = tuple(int(d) for d in np.atleast_1d(attrs["input_shape"]))
        self.x_scale, self.x_offset = np.float32(attrs["x_scale"]), np.float32(attrs["x_offset"])
        self.n_inputs = math.prod(self.input_shape)
        self.source = str(attrs.get("source", ""))
        if self.n_classes < 1 or self.n_inputs < 1:
            raise self._fail(f"n_classes={self.n_classes} and input_shape={list(self.input_shape)} must be positive")

        group = self._file.get(self.split)
        if not isinstance(group, h5py.Group):
            raise self._fail(f"no group /{self.split}")
        for key in ("x", "y"):
            if not isinstance(group.get(key), h5py.Dataset):
                raise self._fail(f"no dataset /{self.split}/{key}")
        x, y = group["x"], group["y"]
        where = f"/{self.split}"
        if x.ndim != 2 or x.shape[1] != self.n_inputs:
            raise self._fail(
                f"{where}/x has shape {x.shape}, expected (N, {self.n_inputs}) for input_shape {list(self.input_shape)}"
            )
        if y.ndim != 1:
            raise self._fail(f"{where}/y has shape {y.shape}, expected (N,)")
        if x.shape[0] != y.shape[0]:
            raise self._fail(f"length mismatch: {where}/x has {x.shape[0]} rows but {where}/y has {y.shape[0]} labels")
        if x.dtype.kind not in "uif" or y.dtype.kind not in "ui":
            raise self._fail(f"{where}/x is {x.dtype} and {where}/y is {y.dtype}, expected numeric x and integer y")
        meta = self._file.get("meta")
        meta_names = [f"/meta/{k}" for k, v in meta.items() if isinstance(v, h5py.Dataset)] if meta else []
        verify_arrays(self._file, [f"{where}/x", f"{where}/y", *meta_names], self.path)
        if len(y):
            labels = y[...]
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.n_classes:
                raise self._fail(
                    f"{where}/y has labels in {lo}..{hi}, expected 0..{self.n_classes - 1} (n_classes={self.n_classes})"
                )
        self._x, self._y = x, y

    # -- properties ---------------------------------------------------------------

    @property
    def n_examples(self) -> int:
        """Number of examples in this shard."""
        return self._hi - self._lo

    @property
    def rows(self) -> tuple[int, int]:
        """This shard's half-open row range ``[lo, hi)`` in the split."""
        return self._lo, self._hi

    @property
    def x_dtype(self) -> np.dtype:
        """Storage dtype of ``x`` (uint8 or float16)."""
        return self._x.dtype

    @property
    def y_dtype(self) -> np.dtype:
        """Storage dtype of ``y`` (batches always give int32)."""
        return self._y.dtype

    def n_batches(self, batch_size: int, drop_last: bool = True) -> int:
        """Number of batches :meth:`batches` yields for this shard."""
        _check_positive("batch_size", batch_size)
        n = self.n_examples
        return n // batch_size if drop_last else -(-n // batch_size)

    # -- streaming ----------------------------------------------------------------

    def _windows(
        self, seed: int, epoch: int, shuffle: bool
    ) -> list[tuple[list[tuple[int, int]], np.random.SeedSequence | None]]:
        """The epoch's plan: windows of row blocks ``(a, b)`` and the seed of each window's shuffle."""
        starts = range(self._lo, self._hi, self.block_rows)
        blocks = [(a, min(a + self.block_rows, self._hi)) for a in starts]
        w = self.window_blocks
        if not shuffle:
            return [(blocks[i : i + w], None) for i in range(0, len(blocks), w)]
        root = np.random.SeedSequence([seed, epoch])
        order_seed, *window_seeds = root.spawn(1 + -(-len(blocks) // w))
        order = np.random.default_rng(order_seed).permutation(len(blocks))
        blocks = [blocks[i] for i in order]
        return [(blocks[i : i + w], window_seeds[i // w]) for i in range(0, len(blocks), w)]

    def batches(
        self,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        shuffle: bool = True,
        drop_last: bool = True,
        start_batch: int = 0,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterate over this shard in batches of ``(x, y)``.

        ``x: (B, n_inputs) float32`` C-contiguous (dequantised:
        ``float32(stored) * x_scale + x_offset``) and ``y: (B,) int32``.  Both
        are views of buffers allocated once per iterator and overwritten by
        the next item: copy them to keep them.  ``B == batch_size`` except for
        a last partial batch when ``drop_last=False``.

        Rows are read in blocks of ``block_rows``; with ``shuffle`` the block
        order is permuted and examples are shuffled within windows of
        ``window_blocks`` blocks, deterministically from ``(seed, epoch)``
        (the order does not depend on ``batch_size``).  Each example appears
        once per epoch.  ``start_batch=k`` yields exactly what the iterator
        would have yielded from its ``k``-th batch on, reading only from the
        window that holds it.
        """
        _check_positive("batch_size", batch_size)
        for label, value in (("seed", seed), ("epoch", epoch)):
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{label} must be a non-negative int, got {value!r}")
        n_batches = self.n_batches(batch_size, drop_last)
        if not 0 <= start_batch <= n_batches:
            raise ValueError(f"start_batch must be in [0, {n_batches}] for batch_size {batch_size}, got {start_batch}")
        return self._stream(
            batch_size, self._windows(int(seed), int(epoch), shuffle), start_batch * batch_size, drop_last
        )

    def _stream(self, batch_size, windows, start, drop_last):
        cap = min(self.window_blocks * self.block_rows, self.n_examples)
        x_buf = np.empty((batch_size, self.n_inputs), np.float32)
        y_buf = np.empty(batch_size, np.int32)
        raw_x = np.empty((cap, self.n_inputs), self._x.dtype)
        raw_y = np.empty(cap, self._y.dtype)
        pick_x = np.empty((batch_size, self.n_inputs), self._x.dtype)  # one batch of shuffled stored rows
        pick_y = np.empty(batch_size, self._y.dtype)
        filled = pos = 0
        for blocks, window_seed in windows:
            n = sum(b - a for a, b in blocks)
            if pos + n <= start:  # skipped by start_batch: not read at all
                pos += n
                continue
            at = 0
            for a, b in blocks:
                self._x.read_direct(raw_x, np.s_[a:b], np.s_[at : at + b - a])
                self._y.read_direct(raw_y, np.s_[a:b], np.s_[at : at + b - a])
                at += b - a
            perm = None if window_seed is None else np.random.default_rng(window_seed).permutation(n)
            i = max(0, start - pos)
            while i < n:
                k = min(batch_size - filled, n - i)
                if perm is None:
                    src_x, src_y = raw_x[i : i + k], raw_y[i : i + k]
                else:  # mode="clip" gathers without an internal buffer
                    src_x = np.take(raw_x, perm[i : i + k], axis=0, out=pick_x[:k], mode="clip")
                    src_y = np.take(raw_y, perm[i : i + k], out=pick_y[:k], mode="clip")
                self._dequantize(src_x, x_buf[filled : filled + k])
                y_buf[filled : filled + k] = src_y
                filled, i = filled + k, i + k
                if filled == batch_size:
                    yield x_buf, y_buf
                    filled = 0
            pos += n
        if filled and not drop_last:
            yield x_buf[:filled], y_buf[:filled]

    def _dequantize(self, src: np.ndarray, dst: np.ndarray) -> None:
        """``dst[...] = float32(src) * x_scale + x_offset`` with no temporary arrays."""
        if self.x_scale == 1:
            np.copyto(dst, src, casting="unsafe")
        else:
            np.multiply(src, self.x_scale, out=dst, casting="unsafe")
        if self.x_offset != 0:
            np.add(dst, self.x_offset, out=dst)

    # -- lifetime -----------------------------------------------------------------

    def close(self) -> None:
        """Close the HDF5 file; iterators still running fail afterwards."""
        self._file.close()

    def __enter__(self) -> H5Dataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"H5Dataset({str(self.path)!r}, split={self.split!r}, shard={self.shard}/{self.n_shards}: "
            f"{self.n_examples} x {list(self.input_shape)} {self.x_dtype}, {self.n_classes} classes)"
        )


def _check_positive(label: str, value) -> None:
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{label} must be a positive int, got {value!r}")
