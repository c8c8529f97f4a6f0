"""dbnet: DistBelief-style distributed training on MPI (train, launch, data, info, bench).

User errors (:class:`~dbnet.errors.DbnetError`) print one line,
``dbnet: error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

import dbnet  # noqa: F401 - applies runtime tuning before numpy loads
from dbnet.errors import DbnetError


def _cmd_train(args: argparse.Namespace) -> int:
    from dbnet import mpi

    if args.resume and args.config:
        raise DbnetError("give either CONFIG or --resume RUN_DIR, not both (the run directory holds its config)")
    if mpi.launched_by_mpi():
        from dbnet.runtime.startup import main

        return main(args.config, args.set, args.resume, args.quiet)

    from dbnet import config as config_mod
    from dbnet.progress import Progress, print_summary
    from dbnet.train import resume_config, train

    progress = Progress(None, enabled=False if args.quiet else None)
    if args.resume:
        cfg, rd, ck = resume_config(args.resume, args.set)
        _require_single_process(cfg, f"--resume {args.resume}")
        progress.log(f"resuming {rd.path} from step {ck.loop.step}")
        s = train(cfg, rd=rd, resume=ck, progress=progress)
    else:
        if not args.config:
            raise DbnetError("dbnet train needs a CONFIG file (e.g. experiments/fashion_mlp_sgd.toml) or --resume RUN_DIR")
        cfg = config_mod.load(args.config, args.set)
        _require_single_process(cfg, args.config)
        s = train(cfg, progress=progress)
    print_summary(s)
    return 0


def _require_single_process(cfg, what: str) -> None:
    if cfg.distributed:
        from dbnet.algorithms import world_size

        n = world_size(cfg)
        raise DbnetError(f"train.algorithm = {cfg.train.algorithm!r} runs under MPI on {n} ranks: "
                         f"dbnet launch {what}  (or: mpiexec -n {n} dbnet train ..., srun -n {n} dbnet train ...)")


def _cmd_launch(args: argparse.Namespace) -> int:
    import shlex

    from dbnet.launch import launch

    if args.print_ranks:
        from pathlib import Path

        from dbnet import config as config_mod
        from dbnet.algorithms import world_size

        if not (args.config or args.resume):
            raise DbnetError("dbnet launch --print-ranks needs a CONFIG file or --resume RUN_DIR")
        path = Path(args.resume) / "config.toml" if args.resume else args.config
        print(world_size(config_mod.load(path, args.set)))
        return 0
    return launch(args.config, args.set, args.resume, shlex.split(args.mpiexec_args), quiet=args.quiet)


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

    la = sub.add_parser("launch", help="run a distributed config under mpiexec with the right number of ranks")
    la.add_argument("config", nargs="?", help="TOML config file")
    la.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    la.add_argument("--resume", metavar="RUN_DIR")
    la.add_argument("--quiet", action="store_true")
    la.add_argument("--mpiexec-args", default="", metavar="ARGS",
                    help="extra arguments for mpiexec, as one string (e.g. --mpiexec-args='--bind-to none')")
    la.add_argument("--print-ranks", action="store_true",
                    help="print the number of MPI ranks the config needs and exit (for batch scripts)")
    la.set_defaults(func=_cmd_launch)

    i = sub.add_parser("info", help="versions, MPI library, threads, BLAS")
    i.set_defaults(func=_cmd_info)

    from dbnet.data.commands import register as register_data
    from dbnet.bench.commands import register as register_bench

    from dbnet.chaos import register as register_chaos

    register_data(sub)
    register_bench(sub)
    register_chaos(sub)
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
