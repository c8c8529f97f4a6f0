"""The ``dbnet`` command line: ``train``, ``data``, ``info``, ``bench``.

User errors (:class:`~dbnet.errors.DbnetError`) print one line,
``dbnet: error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

import dbnet  # noqa: F401 - applies runtime tuning before numpy loads
from dbnet.errors import DbnetError


def _cmd_train(args: argparse.Namespace) -> int:
    from dbnet import config as config_mod
    from dbnet.progress import Progress
    from dbnet.train import resume_config, train

    progress = Progress(None, enabled=False if args.quiet else None)
    if args.resume:
        if args.config:
            raise DbnetError("give either CONFIG or --resume RUN_DIR, not both (the run directory holds its config)")
        cfg, rd, ck = resume_config(args.resume, args.set)
        progress.log(f"resuming {rd.path} from step {ck.loop.step}")
        s = train(cfg, rd=rd, resume=ck, progress=progress)
    else:
        if not args.config:
            raise DbnetError("dbnet train needs a CONFIG file (e.g. experiments/fashion_mlp.toml) or --resume RUN_DIR")
        cfg = config_mod.load(args.config, args.set)
        s = train(cfg, progress=progress)
    print(f"done: {s['stopped_because']}; test accuracy {100 * s['final_test_accuracy']:.2f}% "
          f"(best {100 * s['best_test_accuracy']:.2f}%), {s['examples_seen']} examples in {s['wall_seconds']:.1f} s "
          f"({s['examples_per_second']:,.0f} examples/s)")
    print(f"summary: {s['run_dir']}/summary.json")
    print(f"plot:    {s['plot']}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from dbnet.info import collect, format_info

    print(format_info(collect()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dbnet", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"dbnet {dbnet.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a network from a TOML config")
    t.add_argument("config", nargs="?", help="TOML config file")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set train.max_epochs=2")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    t.add_argument("--quiet", action="store_true", help="print only the final result")
    t.set_defaults(func=_cmd_train)

    i = sub.add_parser("info", help="versions, MPI library, threads, BLAS")
    i.set_defaults(func=_cmd_info)

    from dbnet.data.commands import register as register_data
    from dbnet.bench.commands import register as register_bench

    register_data(sub)
    register_bench(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DbnetError as e:
        print(f"dbnet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dbnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
