"""IDX files (MNIST, Fashion-MNIST): read, write, and import into dbnet's HDF5 layout.

An IDX file is a 4-byte big-endian magic number ``0x00 0x00 <type> <ndim>``,
``ndim`` big-endian uint32 dimensions, then the array data in C order.  Files
ending in ``.gz`` are gzip-compressed.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from dbnet.atomic import atomic_path
from dbnet.errors import DataError

# IDX type code -> big-endian numpy dtype.
_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in _TYPES.items()}

# The four files of MNIST and Fashion-MNIST, per split: (images, labels).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: truncated or corrupt gzip data ({e})") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed if its name ends in ``.gz``).

    Returns a writable array in native byte order with the file's dimensions,
    e.g. ``(60000, 28, 28) uint8`` for images and ``(60000,) uint8`` for labels.
    Raises :class:`DataError` naming the file for a bad magic number, an unknown
    type code, a truncated header or data, trailing bytes, or corrupt gzip data.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: not an IDX file: {len(raw)} bytes, too short for the 4-byte magic number")
    zero, code, ndim = int.from_bytes(raw[0:2], "big"), raw[2], raw[3]
    if zero != 0 or code not in _TYPES:
        raise DataError(
            f"{path}: not an IDX file: bad magic number 0x{raw[:4].hex()} "
            f"(expected 0x0000 then a type code such as 08 for uint8, then the number of dimensions)"
        )
    if ndim == 0:
        raise DataError(f"{path}: bad IDX header: 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path}: truncated IDX file: header of {ndim} dimensions needs {header} bytes, found {len(raw)}"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    shape = "x".join(map(str, dims))
    if found < expected:
        raise DataError(f"{path}: truncated IDX file: header says {shape} = {expected} bytes of data, found {found}")
    if found > expected:
        raise DataError(
            f"{path}: trailing garbage after IDX data: header says {shape} = {expected} bytes of data, "
            f"found {found} ({found - expected} extra)"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` (any shape, dtype uint8/int8/int16/int32/float32/float64) as IDX.

    gzip-compressed if ``path`` ends in ``.gz``; written atomically.
    """
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"write_idx: dtype {array.dtype} has no IDX type code; use one of {sorted(map(str, _CODES))}")
    if array.ndim == 0:
        raise ValueError("write_idx: need at least 1 dimension, got a scalar")
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=_TYPES[code]).tobytes()
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".gz":
            with gzip.open(tmp, "wb", compresslevel=6) as f:
                f.write(data)
        else:
            tmp.write_bytes(data)


def find_idx_file(src_dir: Path, base: str) -> Path:
    """``src_dir/base.gz`` if it exists, else ``src_dir/base``; :class:`DataError` if neither does."""
    for candidate in (src_dir / f"{base}.gz", src_dir / base):
        if candidate.is_file():
            return candidate
    raise DataError(f"{src_dir}: missing IDX file {base}.gz (or uncompressed {base})")


def _read_split(src_dir: Path, split: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    img_path, lab_path = (find_idx_file(src_dir, base) for base in IDX_FILES[split])
    x, y = read_idx(img_path), read_idx(lab_path)
    if x.ndim < 2 or x.dtype != np.uint8:
        raise DataError(f"{img_path}: expected images (N, rows, cols) uint8, got {x.shape} {x.dtype}")
    if y.ndim != 1 or y.dtype != np.uint8:
        raise DataError(f"{lab_path}: expected labels (N,) uint8, got {y.shape} {y.dtype}")
    if len(x) != len(y):
        raise DataError(f"{lab_path}: {len(y)} labels but {img_path.name} has {len(x)} images")
    if len(y) and y.max() >= n_classes:
        bad = int(np.argmax(y >= n_classes))
        raise DataError(f"{lab_path}: label {y[bad]} at index {bad} is out of range 0..{n_classes - 1}")
    return x, y


def import_idx_dataset(src_dir: str | os.PathLike, out_h5: str | os.PathLike, name: str) -> Path:
    """Import the four IDX files of MNIST or Fashion-MNIST from ``src_dir`` into ``out_h5``.

    Images are stored as ``x: (N, rows*cols) uint8`` with ``x_scale=1/255``,
    labels as ``y: (N,) uint8`` in 0..9; ``input_shape`` is ``[rows, cols]``.
    Training examples are shuffled once (seed 0).  Returns ``out_h5``.
    """
    from dbnet.data.h5 import write_dataset

    src_dir = Path(src_dir)
    (xtr, ytr), (xte, yte) = (_read_split(src_dir, split, 10) for split in ("train", "test"))
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"{src_dir}: train images are {xtr.shape[1:]} but test images are {xte.shape[1:]}")
    write_dataset(
        out_h5,
        name=name,
        train=(xtr.reshape(len(xtr), -1), ytr),
        test=(xte.reshape(len(xte), -1), yte),
        n_classes=10,
        input_shape=list(xtr.shape[1:]),
        x_scale=1.0 / 255.0,
        x_offset=0.0,
        source=f"{name} IDX files from {src_dir.resolve()}",
    )
    return Path(out_h5)
