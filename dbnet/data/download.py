"""Fetch the public raw files of a dataset over HTTP(S), verified by checksums.

Every file is written atomically and checked before it is kept.  The base URL
can be overridden (tests use a ``file://`` URL).  Without network the error
says so and how to get the files another way.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from dbnet.atomic import atomic_path, write_text_atomic
from dbnet.data.paths import check_name, default_download_dir
from dbnet.errors import DataError

# Fashion-MNIST, checked by the SHA-256 of each file's *decompressed* bytes.  The
# gzip bytes differ between Zalando's originals and Debian's re-compressed copies
# (in ../shared/datasets: no file name in the gzip header, so their SHA256SUMS
# would reject the originals); the decompressed IDX data is identical in both.
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

# MNIST (the mirror torchvision uses; yann.lecun.com often refuses downloads).  We
# have no copy to compute SHA-256s from, so these are the widely published MD5s of
# the original .gz files (torchvision's) plus their sizes; not verified here.
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422),
    "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432", 28881),
    "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3", 1648877),
    "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c", 4542),
}

# FSDD: GitHub's archive of the repository; only recordings/*.wav is kept.  Checked
# by one SHA-256 over its 3000 per-file lines, as `sha256sum` prints them from the
# dataset directory, sorted bytewise:  LC_ALL=C sort SHA256SUMS | sha256sum
FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/heads/"
FSDD_ARCHIVE = "master.tar.gz"
FSDD_RECORDINGS_SHA256 = "782ba3104cab450397c83dd3b51381d056bfbf7b5f479bdcdb60438902ef191f"

_CHUNK = 1 << 20


def download(
    name: str, dest_dir: str | os.PathLike | None = None, *, base_url: str | None = None, timeout: float = 60.0
) -> Path:
    """Download the raw files of dataset ``name`` into ``dest_dir`` and verify them.

    ``dest_dir`` defaults to where :func:`dbnet.data.find_source` looks
    (``$DBNET_DATA/<name>`` or ``<cache>/sources/<name>``).  ``base_url``
    replaces the official location (it must end in ``/``).  Files already
    present and valid are kept.  Raises :class:`DataError` when a file cannot
    be fetched or fails its checksum.  Returns ``dest_dir``.
    """
    check_name(name)
    dest = Path(dest_dir) if dest_dir is not None else default_download_dir(name)
    dest.mkdir(parents=True, exist_ok=True)
    if name == "fsdd":
        _download_fsdd(base_url or FSDD_URL, dest, timeout)
    elif name == "fashion-mnist":
        for file, digest in FASHION_MNIST_SHA256.items():
            _download_checked(
                f"{base_url or FASHION_MNIST_URL}{file}", dest / file, timeout, _check_gunzip_sha256, digest
            )
    else:
        for file, (digest, size) in MNIST_MD5.items():
            _download_checked(f"{base_url or MNIST_URL}{file}", dest / file, timeout, _check_md5, (digest, size))
    return dest


def _fetch(url: str, out: Path, timeout: float) -> None:
    """Copy ``url`` to the file ``out``; :class:`DataError` if it cannot be fetched."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(out, "wb") as f:
            shutil.copyfileobj(response, f, _CHUNK)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(
            f"cannot download {url}: {reason} (no network? copy the files from a machine that has them "
            f"and pass --src DIR or set DBNET_DATA)"
        ) from None


def _download_checked(url: str, target: Path, timeout: float, check, expected) -> None:
    if target.is_file() and check(target, expected) is None:
        return
    with atomic_path(target) as tmp:
        _fetch(url, tmp, timeout)
        problem = check(tmp, expected)
        if problem:
            raise DataError(f"{url}: checksum mismatch: {problem} (corrupt or changed download; nothing was kept)")


def _check_gunzip_sha256(path: Path, expected: str) -> str | None:
    """``None`` if the decompressed bytes of ``path`` have SHA-256 ``expected``, else the problem."""
    h = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            while block := f.read(_CHUNK):
                h.update(block)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        return f"not valid gzip data ({e})"
    if h.hexdigest() != expected:
        return f"SHA-256 of the decompressed data is {h.hexdigest()}, expected {expected}"
    return None


def _check_md5(path: Path, expected: tuple[str, int]) -> str | None:
    digest, size = expected
    found = path.stat().st_size
    if found != size:
        return f"{found} bytes, expected {size}"
    h = hashlib.md5(path.read_bytes())
    return None if h.hexdigest() == digest else f"MD5 is {h.hexdigest()}, expected {digest}"


def _sha256_lines(recordings: Path) -> list[str]:
    """``sha256sum`` lines (``"<hex>  recordings/<file>\\n"``) of ``recordings/*.wav``, sorted bytewise."""
    return sorted(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  recordings/{p.name}\n" for p in recordings.glob("*.wav")
    )


def recordings_digest(recordings: Path) -> str:
    """SHA-256 over the sorted ``sha256sum`` lines of ``recordings/*.wav`` (what FSDD is checked by)."""
    return hashlib.sha256("".join(_sha256_lines(recordings)).encode()).hexdigest()


def _download_fsdd(base_url: str, dest: Path, timeout: float) -> None:
    recordings = dest / "recordings"
    if recordings.is_dir() and recordings_digest(recordings) == FSDD_RECORDINGS_SHA256:
        return
    url = f"{base_url}{FSDD_ARCHIVE}"
    with tempfile.TemporaryDirectory(prefix=".fsdd-", dir=dest) as work:
        work = Path(work)
        _fetch(url, work / FSDD_ARCHIVE, timeout)
        fresh = work / "recordings"
        fresh.mkdir()
        try:
            with tarfile.open(work / FSDD_ARCHIVE, "r:*") as tar:
                for member in tar:
                    path = PurePosixPath(member.name)
                    if member.isfile() and path.parent.name == "recordings" and path.suffix == ".wav":
                        (fresh / path.name).write_bytes(tar.extractfile(member).read())
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise DataError(f"{url}: not a readable tar.gz archive ({e})") from None
        lines = _sha256_lines(fresh)
        found = hashlib.sha256("".join(lines).encode()).hexdigest()
        if found != FSDD_RECORDINGS_SHA256:
            raise DataError(
                f"{url}: checksum mismatch: the {len(lines)} recordings digest to {found}, "
                f"expected {FSDD_RECORDINGS_SHA256} "
                f"(3000 files; corrupt or changed download; nothing was kept)"
            )
        if recordings.exists():
            recordings.rename(work / "old-recordings")
        fresh.rename(recordings)
    write_text_atomic(dest / "SHA256SUMS", "".join(lines))
