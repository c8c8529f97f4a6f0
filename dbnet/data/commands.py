"""The ``dbnet data`` subcommand: ``import``, ``download`` and ``info``.

Each handler takes the parsed :class:`argparse.Namespace` and returns an exit
code; problems are raised as :class:`dbnet.errors.DataError`, which the
command line prints as one line.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dbnet.data.download import download
from dbnet.data.h5 import SPLITS, H5Dataset
from dbnet.data.paths import DATASETS, dataset_path, find_source, import_dataset


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` subcommand and its verbs to ``subparsers``."""
    data = subparsers.add_parser(
        "data", help="import, download and inspect datasets", description=__doc__.splitlines()[0]
    )
    verbs = data.add_subparsers(dest="data_verb", metavar="VERB", required=True)

    p = verbs.add_parser("import", help="import raw files into dbnet's HDF5 layout")
    p.add_argument("name", choices=DATASETS)
    p.add_argument(
        "--src", type=Path, metavar="DIR", help="raw files (default: the first place find_source finds them)"
    )
    p.add_argument("--out", type=Path, metavar="FILE", help="output .h5 (default: the cache path ensure_dataset uses)")
    p.add_argument(
        "--segments", type=_positive_int, metavar="K", help="fsdd only: label = digit*K + segment (10*K classes)"
    )
    p.set_defaults(func=cmd_import)

    p = verbs.add_parser("download", help="fetch the public raw files and verify their checksums")
    p.add_argument("name", choices=DATASETS)
    p.add_argument(
        "--dest", type=Path, metavar="DIR", help="where to put them (default: $DBNET_DATA/NAME or the cache)"
    )
    p.add_argument("--base-url", metavar="URL", help="a mirror holding the same files (ending in /)")
    p.set_defaults(func=cmd_download)

    p = verbs.add_parser("info", help="describe an imported .h5 dataset")
    p.add_argument("file", type=Path, metavar="FILE")
    p.set_defaults(func=cmd_info)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def cmd_import(args: argparse.Namespace) -> int:
    """``dbnet data import NAME [--src DIR] [--out FILE] [--segments K]``."""
    out = args.out or dataset_path(args.name, segments=args.segments)
    src = args.src or find_source(args.name)
    start = time.perf_counter()
    import_dataset(args.name, src, out, segments=args.segments)
    print(
        f"imported {args.name} from {src} into {out} "
        f"({out.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - start:.1f} s)"
    )
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """``dbnet data download NAME [--dest DIR]``."""
    dest = download(args.name, args.dest, base_url=args.base_url)
    print(f"downloaded {args.name} into {dest}")
    return 0


def describe(path: Path) -> str:
    """A few lines describing the dataset file ``path`` (validated on the way)."""
    lines = [f"file: {path} ({path.stat().st_size / 2**20:.1f} MiB)"] if path.is_file() else []
    for split in SPLITS:
        with H5Dataset(path, split) as ds:
            if split == SPLITS[0]:
                source = ds.source
                lines += [
                    f"name: {ds.name}",
                    f"classes: {ds.n_classes}",
                    f"input_shape: {list(ds.input_shape)} ({ds.n_inputs} inputs), "
                    f"value = stored * {ds.x_scale:.8g} + {ds.x_offset:.8g}",
                ]
            stored = ds.n_examples * ds.n_inputs * ds.x_dtype.itemsize
            lines.append(
                f"{split}: {ds.n_examples} examples, x ({ds.n_examples}, {ds.n_inputs}) {ds.x_dtype} "
                f"({stored / 2**20:.1f} MiB), y ({ds.n_examples},) {ds.y_dtype}"
            )
    lines.append(f"source: {source}")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    """``dbnet data info FILE``."""
    print(describe(args.file))
    return 0
