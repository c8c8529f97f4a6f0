"""``dbnet launch`` under signals: it forwards them to mpiexec and leaves no process of the job behind.

The real tests start a small Downpour job (3 ranks) with ``dbnet launch``
under Open MPI and MPICH, wait until it trains, signal the launch process as
a ``timeout`` or a scheduler would, and check that it exits promptly with
128 + signum and that no process it had under it survives.  The rest use a
stand-in mpiexec (a shell script) for what a real one would not show: a
job that ignores SIGTERM, a second signal, SIGUSR1 forwarding.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbnet.launch import descendants, start_time
from mpirun import mpiexec_for

REPO = Path(__file__).resolve().parents[1]


def write_cfg(tmp_path: Path, h5: Path) -> Path:
    cfg = tmp_path / "launch.toml"
    cfg.write_text(f"""
[run]
out_dir = "{tmp_path / 'runs'}"
seed = 5
threads = 1
[data]
path = "{h5}"
[model]
hidden = [32]
[optimizer]
rule = "sgd"
lr = 0.05
[train]
algorithm = "downpour"
batch_size = 32
max_steps = 100000000
eval_every_seconds = 0.5
eval_examples = 200
checkpoint_every_seconds = 0
[topology]
shards = 1
replicas = 2
""")
    return cfg


def launch_env(impl: str) -> dict:
    """The environment that points ``dbnet launch`` at Open MPI or MPICH (``DBNET_MPIEXEC``)."""
    cmd, env = mpiexec_for(impl)
    if impl == "mpich":
        env["DBNET_MPIEXEC"] = cmd[0]
    else:
        env.pop("DBNET_MPIEXEC", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def alive(procs: dict[int, int]) -> list[int]:
    """The pids in {pid: start time} that still run (same start time: not a reused pid; zombies are gone)."""
    return [pid for pid, start in procs.items() if start_time(pid) == start]


def is_rank(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(f"{sys.executable}\0-m\0dbnet\0train\0".encode())
    except OSError:
        return False


def kill_all(launch: subprocess.Popen, procs: dict[int, int]) -> None:
    """Clean-up after a failed test: launch's group, then every process recorded under it."""
    try:
        os.killpg(launch.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in alive(procs):
        os.kill(pid, signal.SIGKILL)
    launch.wait()


def wait_for(pred, timeout: float, what: str, log: Path) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout} s; log:\n{log.read_text()}")
        time.sleep(0.2)


def trained_examples(log: Path) -> int:
    found = re.findall(r"^examples\s+(\d+)", log.read_text(), re.M)
    return max(map(int, found), default=0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("impl, sig", [("openmpi", signal.SIGTERM), ("openmpi", signal.SIGINT),
                                       ("mpich", signal.SIGTERM), ("mpich", signal.SIGINT)])
def test_a_signalled_launch_ends_the_whole_job(tmp_path, fashion_mnist_h5, impl, sig):
    cfg = write_cfg(tmp_path, fashion_mnist_h5)
    log = tmp_path / "launch.log"
    with open(log, "w") as out:
        launch = subprocess.Popen([sys.executable, "-m", "dbnet", "launch", str(cfg)], stdout=out, stderr=subprocess.STDOUT,
                                  env=launch_env(impl), cwd=tmp_path, start_new_session=True)
    procs: dict[int, int] = {}
    try:
        wait_for(lambda: trained_examples(log) > 0 or launch.poll() is not None, 40, "training started", log)
        assert launch.poll() is None, log.read_text()
        procs = descendants(launch.pid)
        ranks = [p for p in procs if is_rank(p)]
        assert len(ranks) == 3, (procs, log.read_text())
        t0 = time.monotonic()
        os.kill(launch.pid, sig)
        launch.wait(timeout=20)
        seconds = time.monotonic() - t0
        assert launch.returncode == 128 + sig, (launch.returncode, log.read_text())
        assert seconds < 15, f"launch took {seconds:.1f} s to end after {sig.name}"
        wait_for(lambda: not alive(procs), 5, f"every process of the job gone ({alive(procs)} still alive)", log)
        assert f"dbnet launch: {sig.name}: ending the job" in log.read_text()
    finally:
        kill_all(launch, procs)


# A stand-in mpiexec: logs the signals it gets, ignores SIGTERM and SIGINT, and has a child (a "rank").
FAKE = """#!/bin/bash
trap 'echo USR1 >> "$FAKE_LOG"' USR1
trap 'echo TERM >> "$FAKE_LOG"' TERM
trap 'echo INT >> "$FAKE_LOG"' INT
echo "started $$" >> "$FAKE_LOG"
[ -n "$FAKE_EXIT" ] && exit "$FAKE_EXIT"
sleep 1000 &
while true; do wait; done
"""


def start_fake(tmp_path: Path, grace: float, exit_code: str = "") -> tuple[subprocess.Popen, Path]:
    fake = tmp_path / "mpiexec"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    flog = tmp_path / "fake.log"
    env = dict(os.environ, FAKE_LOG=str(flog), FAKE_EXIT=exit_code,
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    code = f"import sys; from dbnet.launch import run; sys.exit(run([{str(fake)!r}], grace={grace}))"
    p = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                         stderr=subprocess.PIPE, text=True)
    wait_for(lambda: flog.exists() and "started" in flog.read_text(), 10, "stand-in mpiexec started", flog)
    return p, flog


def _fake_job(p: subprocess.Popen) -> dict[int, int]:
    end = time.monotonic() + 10
    while len(procs := descendants(p.pid)) < 2 and time.monotonic() < end:  # the script and its sleep
        time.sleep(0.05)
    assert len(procs) == 2, procs
    return procs


@pytest.mark.timeout(30)
def test_mpiexec_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    p, flog = start_fake(tmp_path, grace=1.5)
    procs = _fake_job(p)
    try:
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGUSR1)
        time.sleep(0.3)
        os.kill(p.pid, signal.SIGTERM)
        _, err = p.communicate(timeout=10)
        assert 1.4 < time.monotonic() - t0 < 6
        assert p.returncode == 143, err
        assert flog.read_text().split("\n")[1:3] == ["USR1", "TERM"], flog.read_text()
        assert "still running 1.5 s after the signal: killing its process group" in err
        wait_for(lambda: not alive(procs), 3, "the stand-in job gone", flog)
    finally:
        kill_all(p, procs)


@pytest.mark.timeout(30)
def test_a_second_signal_kills_at_once(tmp_path):
    p, flog = start_fake(tmp_path, grace=60)
    procs = _fake_job(p)
    try:
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGINT)
        time.sleep(0.3)
        os.kill(p.pid, signal.SIGTERM)
        _, err = p.communicate(timeout=10)
        assert time.monotonic() - t0 < 3
        assert p.returncode == 130, err  # the first signal's status
        assert "INT" in flog.read_text() and "after a second signal" in err
        wait_for(lambda: not alive(procs), 3, "the stand-in job gone", flog)
    finally:
        kill_all(p, procs)


@pytest.mark.timeout(30)
def test_exit_status_is_mpiexecs(tmp_path):
    p, _ = start_fake(tmp_path, grace=5, exit_code="7")
    _, err = p.communicate(timeout=10)
    assert p.returncode == 7, err


def test_dbnet_mpiexec_must_exist(monkeypatch):
    from dbnet.errors import DbnetError
    from dbnet.launch import find_mpiexec

    monkeypatch.setenv("DBNET_MPIEXEC", "/nonexistent/mpiexec")
    with pytest.raises(DbnetError, match="DBNET_MPIEXEC = '/nonexistent/mpiexec': not an executable"):
        find_mpiexec()
    monkeypatch.setenv("DBNET_MPIEXEC", sys.executable)
    assert find_mpiexec() == sys.executable
