"""The ``dbnet bench`` subcommand (the same as ``python -m dbnet.bench``)."""

from __future__ import annotations

import argparse
import json
import sys
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    from dbnet.bench import BENCHMARKS

    p.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    p.add_argument("--batch", type=int, nargs="+", default=[256, 64], metavar="B", help="minibatch sizes (default: 256 64)")
    p.add_argument("--repeats", type=int, default=5, help="measurements per number; medians are reported (default: 5)")
    p.add_argument("--json", metavar="FILE", help="also write the header and results as JSON")
    p.add_argument("--quick", action="store_true", help="a tiny model and one repeat: proves the code runs, measures nothing")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` to the ``dbnet`` command line."""
    p = subparsers.add_parser("bench", help="training throughput vs PyTorch, sgemm, memory, update kernels",
                              description="Benchmarks: training throughput against PyTorch, sgemm, memory "
                                          "bandwidth, update kernels.  Same as python -m dbnet.bench.")
    add_arguments(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run the benchmarks named in ``args``, print the header and one table each; exit code."""
    from dbnet.bench import BENCHMARKS, format_header, format_table, header, load

    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        print(f"dbnet bench: unknown benchmark {unknown[0]!r}; valid: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    if args.repeats < 1 or min(args.batch) < 1:
        print("dbnet bench: --repeats and --batch need positive integers", file=sys.stderr)
        return 2
    repeats = 1 if args.quick else args.repeats
    h = header()
    print(format_header(h), flush=True)
    results = {}
    for name in args.names or BENCHMARKS:
        fn = BENCHMARKS[name]
        start = time.perf_counter()
        results[name] = fn(args.batch, repeats, quick=args.quick)
        print(f"\n{name}: {fn.__doc__.splitlines()[0]} ({time.perf_counter() - start:.0f} s; load after: {load()})")
        print(format_table(results[name]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": h, "results": results}, f, indent=1)
    return 0
