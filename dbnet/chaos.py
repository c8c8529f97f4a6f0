"""``dbnet chaos CONFIG --runs N``: inject one random fault into each of N short Downpour jobs.

Each run starts ``dbnet launch CONFIG`` (Open MPI or MPICH) with its own
``run.out_dir``, limited by time only (``train.max_seconds = --seconds``;
max_steps, max_epochs and target_accuracy are switched off), with
checkpoints every ``--checkpoint-every`` seconds and an evaluation line
every second.  Training has *started* at the first ``examples N`` progress
line with N > 0 (after the ``warmstart over`` line when the config has a
warmstart): ``ranks.json`` comes earlier, before the lead's own start-up
(JIT, test set, first evaluation) and the warmstart, which a fault 1-6 s
after it could still hit.  One fault, drawn from ``--kinds``:

``kill``
    SIGKILL of a random rank (replica, shard or the lead), 1-6 s after the
    start.  The job is expected to die; then it is resumed.
``stop``
    SIGSTOP of a random rank at 1-6 s for 5-20 s, then SIGCONT.  The job is
    expected to survive: exit 0 and a ``summary.json``.
``raise``
    An exception from the ``[faults]`` config, at a random step (set before
    the job starts): ``fail_replica``/``fail_at_step`` (a replica's step
    raises; the job is expected to survive without it) or ``crash_rank``
    (an unhandled error on a random rank, at ``faults.crash_at_step`` when
    the runtime has that key, else right after start-up; the job is expected
    to die with one line, and is resumed).  The step is drawn from
    ``--raise-steps`` (default 100-3000: a few seconds of a replica of a
    small model on two cores; a step the job never reaches is reported as
    "did not fire").  Its fault time is when its message first appears in
    the job's output (``fail_replica`` on a replica other than the lead's
    says nothing until the end: it is found in ``summary.json``, with no
    fault time).

Which rank: ``ranks.json`` (one object per rank: ``rank``, ``role``, ids,
``host``, ``pid``, ``lead``), else the ``dbnet train`` processes under
mpiexec with their rank from the environment (``OMPI_COMM_WORLD_RANK`` /
``PMI_RANK``).  The plan (kind, target, times, steps) depends only on
``--seed``, ``--runs``, ``--kinds`` and the topology.

What each run records (``chaos.json``; ``chaos.md`` has the table):

- ``exit_status``: ``dbnet launch``'s; ``seconds_to_exit`` from the fault to it.
- ``hang``: the job was still alive ``--hang-after`` (30) seconds past the
  later of the fault's end and its own deadline (start + ``--seconds``); the
  harness then SIGKILLs everything it saw under launch.
- ``orphans``: processes seen under launch (mpiexec's descendants, the pids
  of ``ranks.json``) still alive 5 s after launch (and so mpiexec) exited;
  they are killed afterwards.
- for a SIGSTOP: ``rate_before_stop``, the job's examples/s between the
  progress lines from training start to the stop; ``rate_during_stop``,
  from the last progress line before the stop to the first one printed 1 s
  or more after SIGCONT (so a little normal training either side), both
  over the lead's wall seconds printed in those lines; and
  ``evals_during_stop``.  The table shows during / before ("rate in stop").
  A stopped shard stalls the replicas by design; a stopped replica should
  not, and a stopped lead cannot evaluate.
- for a job that died: the newest checkpoint (``examples_seen``, step, age),
  ``examples_lost`` = the examples of the last ``examples N`` progress line
  before the fault minus the checkpoint's ``examples_seen`` (at least 0),
  ``seconds_lost`` = fault time - the checkpoint file's mtime, and
  ``resume``: ``dbnet launch --resume RUN_DIR`` with ``train.max_steps`` =
  the checkpoint's step + ``--resume-steps`` (and, after a ``raise``,
  ``--set faults.<flavour>=-1`` so it does not fire again), its exit status,
  hang, orphans, and ``finished`` (exit 0 and a new ``summary.json``).  A job
  that died with no checkpoint counts as a failed resume.

The exit status is 1 when any run hung, left an orphan, failed to resume,
or did not survive a SIGSTOP; else 0.

Under MPICH (``--impl mpich``) launch is pointed at ``.venv-mpich`` (or
``$DBNET_MPICH_VENV``) through ``DBNET_MPIEXEC`` and ``MPI4PY_LIBMPI``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dbnet.launch import _die_with_parent, descendants, start_time

KINDS = ("kill", "stop", "raise")
ORPHAN_WAIT = 5.0  # seconds after launch exits before a process still alive is an orphan
START_LIMIT = 120.0  # seconds for a job to start training before it counts as hung
_EXAMPLES = re.compile(r"^examples\s+(\d+)(?:\s+epoch\s+\S+\s+([\d.]+) s)?")
_WARM_OVER = re.compile(r"warmstart over")
_RAISED = re.compile(r"injected|failed at step|unhandled error|Traceback")


@dataclasses.dataclass(frozen=True)
class Fault:
    """One run's fault, drawn by :func:`plan`."""

    kind: str  # kill | stop | raise
    delay: float  # kill/stop: seconds after training started
    rank: int  # kill/stop: world rank; raise: the world rank that raises
    stop_seconds: float = 0.0  # stop: SIGCONT after this long
    flavour: str = ""  # raise: fail_replica | crash_rank
    step: int = 0  # raise: fail_at_step / crash_at_step

    def describe(self) -> str:
        if self.kind == "stop":
            return f"SIGSTOP {self.stop_seconds:.0f} s"
        if self.kind == "raise":
            return f"{self.flavour} @{self.step}"
        return "SIGKILL"


def plan(seed: int, runs: int, kinds: tuple[str, ...], replicas: int, world: int,
         raise_steps: tuple[int, int] = (100, 3000), partitions: int = 1) -> list[Fault]:
    """The faults of ``runs`` runs: kinds in turn, everything else drawn from ``random.Random(seed)``.

    ``replicas`` counts replica ranks (replicas x partitions); a ``fail_replica`` fault targets the
    rank of a replica's partition 0 (``rank // partitions`` is the replica)."""
    rng = random.Random(seed)
    faults = []
    for i in range(runs):
        kind = kinds[i % len(kinds)]
        delay = round(rng.uniform(1.0, 6.0), 2)
        rank = rng.randrange(world)
        if kind == "stop":
            faults.append(Fault(kind, delay, rank, stop_seconds=round(rng.uniform(5.0, 20.0), 1)))
        elif kind == "raise":
            flavour = rng.choice(("fail_replica", "crash_rank"))
            if flavour == "fail_replica":
                rank = rng.randrange(replicas // partitions) * partitions  # layout [replicas x partitions | shards]
            faults.append(Fault(kind, 0.0, rank, flavour=flavour, step=rng.randint(*raise_steps)))
        else:
            faults.append(Fault(kind, delay, rank))
    return faults


def _alive(procs: dict[int, int]) -> list[int]:
    return [pid for pid, start in procs.items() if start_time(pid) == start]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _kill(pids, signum=signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


class Job:
    """One ``dbnet launch`` under watch: its output lines with times, every process seen under it."""

    def __init__(self, argv: list[str], env: dict, log: Path, out_dir: Path):
        self.log, self.out_dir = log, out_dir
        with open(log, "w") as f:
            self.proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True, preexec_fn=_die_with_parent)
        self.t0 = time.monotonic()
        self.seen: dict[int, int] = {}
        self.lines: list[tuple[float, str]] = []  # (seconds since start, line)
        self._pos = 0
        self._next_scan = 0.0
        self.exit_time: float | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def poll(self) -> int | None:
        """Read new output, refresh the process set; launch's exit status once it has exited."""
        with open(self.log, "rb") as f:
            f.seek(self._pos)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._pos += end
        t = self.now()
        self.lines += [(t, line) for line in data[:end].decode(errors="replace").splitlines()]
        if time.monotonic() >= self._next_scan:
            self.seen.update(descendants(self.proc.pid))
            self._next_scan = time.monotonic() + 0.5
        code = self.proc.poll()
        if code is not None and self.exit_time is None:
            self.exit_time = t
        return code

    def run_dir(self) -> Path | None:
        found = [d for d in self.out_dir.iterdir() if d.is_dir() and (d / "config.toml").exists()] \
            if self.out_dir.is_dir() else []
        return max(found, key=lambda d: d.stat().st_mtime) if found else None

    def points(self) -> list[tuple[float, int, float]]:
        """The progress lines so far: (seconds since launch, examples, the lead's wall seconds from the line)."""
        pts = []
        for t, line in self.lines:
            if m := _EXAMPLES.match(line):
                pts.append((t, int(m.group(1)), float(m.group(2)) if m.group(2) else t))
        return pts

    def examples_before(self, t: float) -> int | None:
        """The examples count of the last progress line printed at or before ``t``."""
        found = [ex for tl, ex, _ in self.points() if tl <= t]
        return found[-1] if found else None

    def stop_rates(self, t_train: float, t_stop: float, t_cont: float) -> dict[str, Any]:
        """Examples/s before a SIGSTOP and across it, and the evaluations printed while it lasted.

        ``t_train``: when the warmstart ended (0 without one).  Before:
        between the first progress line with examples > 0 after ``t_train``
        and the last line before the stop.  During: from the last line before
        the stop to the first line printed 1 s or more after SIGCONT (a stopped
        lead's first line after SIGCONT can carry an example count it read
        before the stop), or the last line of a job that ended during the
        stop; a little normal training either side dilutes it.  Times are the
        lead's wall seconds in the lines.
        """
        pts = self.points()
        before = [p for p in pts if t_train <= p[0] <= t_stop and p[1] > 0]
        p0 = next((p for p in reversed(pts) if p[0] <= t_stop), None)
        p1 = next((p for p in pts if p[0] >= t_cont + 1.0), pts[-1] if pts and pts[-1][0] > t_stop + 1.0 else None)

        def slope(a, b):
            return round((b[1] - a[1]) / (b[2] - a[2])) if a and b and b[2] - a[2] >= 0.5 else None

        return {"rate_before_stop": slope(before[0], before[-1]) if before else None,
                "rate_during_stop": slope(p0, p1), "evals_during_stop": sum(t_stop < p[0] < t_cont for p in pts)}

    def first_line(self, pattern: re.Pattern) -> float | None:
        return next((t for t, line in self.lines if pattern.search(line)), None)

    def kill_all(self) -> None:
        """SIGKILL launch's group, mpiexec's group and every process seen under launch (after SIGCONT)."""
        self.seen.update(descendants(self.proc.pid))
        live = _alive(self.seen)
        _kill(live, signal.SIGCONT)
        for pgid in {self.proc.pid, *live}:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _kill(_alive(self.seen))
        self.proc.wait()

    def orphans(self, extra: dict[int, int]) -> list[dict]:
        """Wait up to ORPHAN_WAIT s for everything seen to go; kill and return what did not."""
        procs = {**self.seen, **extra}
        end = time.monotonic() + ORPHAN_WAIT
        while _alive(procs) and time.monotonic() < end:
            time.sleep(0.2)
        left = _alive(procs)
        found = [{"pid": pid, "cmdline": _cmdline(pid)[:200]} for pid in left]
        _kill(left, signal.SIGCONT)
        _kill(left)
        end = time.monotonic() + 2.0
        while _alive({pid: procs[pid] for pid in left}) and time.monotonic() < end:
            time.sleep(0.05)
        return found


def rank_table(run_dir: Path | None, job: Job, replicas: int) -> list[dict]:
    """Each rank's ``rank``, ``role``, ``pid``: from ``ranks.json``, else from the processes under mpiexec."""
    if run_dir is not None and (run_dir / "ranks.json").exists():
        try:
            table = json.loads((run_dir / "ranks.json").read_text())
            if all(start_time(int(r["pid"])) is not None for r in table):
                return table
        except (ValueError, KeyError, TypeError):
            pass
    table = []
    for pid in descendants(job.proc.pid):
        if " -m dbnet train" not in _cmdline(pid) or _cmdline(pid).split()[0].endswith(("mpiexec", "mpirun")):
            continue
        try:
            env = dict(e.split(b"=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
        except OSError:
            continue
        r = env.get(b"OMPI_COMM_WORLD_RANK", env.get(b"PMI_RANK"))
        if r is not None:
            table.append({"rank": int(r), "role": "replica" if int(r) < replicas else "shard", "pid": pid,
                          "lead": int(r) == 0})
    return sorted(table, key=lambda r: r["rank"])


def _role(entry: dict | None) -> str:
    if not entry:
        return "?"
    role = entry.get("role", "?")
    return role + (" (lead)" if entry.get("lead") else "")


def watch(job: Job, fault: Fault | None, seconds: float, hang_after: float, replicas: int,
          warm: bool = False) -> dict[str, Any]:
    """Run ``job`` to its end, injecting ``fault`` (kill/stop) once training has started; the run's record.

    ``warm``: the config has a warmstart, so training starts at its end.
    """
    rec: dict[str, Any] = {"fired": False, "hang": False}
    t_start = t_fault = t_cont = None
    stopped: int | None = None
    deadline = START_LIMIT + seconds + hang_after
    try:
        while True:
            code = job.poll()
            now = job.now()
            if code is not None:
                break
            if t_start is None:
                t_warm = job.first_line(_WARM_OVER) if warm else 0.0
                if t_warm is not None and any(ex > 0 and t >= t_warm for t, ex, _ in job.points()):
                    t_start = now
                    rec["train_started"] = round(t_start, 2)
                    deadline = t_start + seconds + hang_after
            if fault is not None and fault.kind in ("kill", "stop") and t_start is not None and t_fault is None \
                    and now >= t_start + fault.delay:
                table = rank_table(job.run_dir(), job, replicas)
                entry = next((r for r in table if r["rank"] == fault.rank), None)
                t_fault = now
                if entry is not None:
                    rec.update(fired=True, target_pid=entry["pid"], target_role=_role(entry), fault_wall=time.time())
                    _kill([entry["pid"]], signal.SIGKILL if fault.kind == "kill" else signal.SIGSTOP)
                    if fault.kind == "stop":
                        stopped, t_cont = entry["pid"], now + fault.stop_seconds
                else:
                    rec["error"] = f"rank {fault.rank} not found among {[r['rank'] for r in table]}"
                rec["fault_at"] = round(t_fault, 2)
                deadline = max(deadline, (t_cont or t_fault) + hang_after)
            if stopped is not None and now >= t_cont:
                _kill([stopped], signal.SIGCONT)
                stopped = None
            if now > deadline:
                rec["hang"] = True
                job.kill_all()
                job.poll()
                break
            time.sleep(0.1)
    finally:
        if stopped is not None:
            _kill([stopped], signal.SIGCONT)
        if job.proc.poll() is None:
            job.kill_all()
    job.poll()
    rec["exit_status"] = job.proc.returncode
    rec["seconds"] = round(job.exit_time or job.now(), 2)
    if fault is not None and fault.kind == "raise":
        t_fault = job.first_line(_RAISED)
        if t_fault is not None:
            rec.update(fired=True, fault_at=round(t_fault, 2), fault_wall=time.time() - (job.now() - t_fault))
    if t_fault is not None and rec["fired"]:
        rec["seconds_to_exit"] = round((job.exit_time or job.now()) - t_fault, 2)
        rec["examples_at_fault"] = job.examples_before(t_fault)
    if fault is not None and fault.kind == "stop" and rec["fired"]:
        t_train = (job.first_line(_WARM_OVER) or 0.0) if warm else 0.0
        rec.update(job.stop_rates(t_train, t_fault, t_fault + fault.stop_seconds))
    return rec


def _checkpoint(run_dir: Path) -> dict | None:
    """The newest checkpoint that loads: path, step, examples_seen, mtime."""
    from dbnet import checkpoint as ckpt_mod
    from dbnet.errors import CheckpointError

    for path in reversed(ckpt_mod.list_checkpoints(run_dir / "checkpoints")):
        try:
            loop = ckpt_mod.load(path).loop
        except CheckpointError:
            continue
        return {"path": str(path), "step": loop.step, "examples_seen": loop.examples_seen,
                "mtime": path.stat().st_mtime}
    return None


class Chaos:
    """The settings shared by every run of one ``dbnet chaos``."""

    def __init__(self, args: argparse.Namespace):
        from dbnet import config as config_mod

        self.args = args
        self.cfg = config_mod.load(args.config, args.set)
        if not self.cfg.distributed:
            from dbnet.errors import ConfigError

            raise ConfigError(f"dbnet chaos needs a distributed config; {args.config} has train.algorithm = "
                              f"{self.cfg.train.algorithm!r}")
        from dbnet.config import FaultsConfig
        from dbnet.topology import world_size

        t = self.cfg.topology
        self.replicas, self.world = t.replicas * t.partitions, world_size(t.shards, t.replicas, t.partitions)
        self.partitions = t.partitions
        self.warm = bool(self.cfg.downpour.warmstart_steps or self.cfg.downpour.warmstart_seconds)
        self.has_crash_step = "crash_at_step" in {f.name for f in dataclasses.fields(FaultsConfig)}
        self.env = impl_env(args.impl)
        self.out = Path(args.out or f"runs/chaos-{time.strftime('%Y%m%d-%H%M%S')}").resolve()

    def launch_argv(self, *items: str, config: str | None = None, resume: Path | None = None) -> list[str]:
        argv = [sys.executable, "-m", "dbnet", "launch"]
        argv += ["--resume", str(resume)] if resume else [str(config)]
        for item in items:
            argv += ["--set", item]
        return argv

    def job_overrides(self, out_dir: Path, fault: Fault) -> list[str]:
        a = self.args
        items = [*a.set, f"run.out_dir={json.dumps(str(out_dir))}", f"train.max_seconds={a.seconds}",
                 "train.max_steps=0", "train.max_epochs=0", "train.target_accuracy=0",
                 f"train.checkpoint_every_seconds={a.checkpoint_every}", "train.eval_every_seconds=1"]
        if fault.kind == "raise" and fault.flavour == "fail_replica":
            items += [f"faults.fail_replica={fault.rank // self.partitions}", f"faults.fail_at_step={fault.step}"]
        elif fault.kind == "raise":
            items += [f"faults.crash_rank={fault.rank}"]
            if self.has_crash_step:
                items += [f"faults.crash_at_step={fault.step}"]
        return items

    def run_one(self, i: int, fault: Fault) -> dict[str, Any]:
        a = self.args
        out_dir = self.out / f"run-{i:03d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        job = Job(self.launch_argv(*self.job_overrides(out_dir, fault), config=a.config), self.env,
                  out_dir / "launch.log", out_dir)
        rec: dict[str, Any] = {"run": i, "kind": fault.kind, "fault": fault.describe(), "target_rank": fault.rank,
                               "plan": dataclasses.asdict(fault)}
        rec.update(watch(job, fault, a.seconds, a.hang_after, self.replicas, self.warm))
        rd = job.run_dir()
        rec["run_dir"] = str(rd) if rd else None
        table = rank_table(rd, job, self.replicas) if rd and (rd / "ranks.json").exists() else []
        ranks_pids = {int(r["pid"]): st for r in table
                      if (st := start_time(int(r["pid"]))) is not None and " dbnet train" in _cmdline(int(r["pid"]))}
        if "target_role" not in rec:
            entry = next((r for r in table if r["rank"] == fault.rank), None)
            rec["target_role"] = _role(entry) if entry else ("replica" if fault.rank < self.replicas else "shard")
        rec["orphans"] = [] if rec["hang"] else job.orphans(ranks_pids)
        rec["expected"] = "survive" if fault.kind == "stop" or fault.flavour == "fail_replica" else "die"
        rec["survived"] = rec["exit_status"] == 0 and rd is not None and (rd / "summary.json").exists()
        if fault.flavour == "fail_replica" and not rec["fired"] and rec["survived"]:
            # a replica other than the lead's fails silently until the summary: find it there
            replicas = json.loads((rd / "summary.json").read_text()).get("replicas", [])
            error = replicas[fault.rank].get("error") if fault.rank < len(replicas) else None
            rec["fired"] = bool(error and "injected" in error)
        if not rec["survived"] and not rec["hang"]:
            self.resume(rec, rd, out_dir)
        return rec

    def resume(self, rec: dict, rd: Path | None, out_dir: Path) -> None:
        """``dbnet launch --resume`` the run that died, a little further than its newest checkpoint."""
        a = self.args
        ck = _checkpoint(rd) if rd else None
        if ck is None:
            rec["resume"] = {"finished": False, "error": "no readable checkpoint"}
            return
        rec["checkpoint"] = {"step": ck["step"], "examples_seen": ck["examples_seen"], "path": ck["path"]}
        if rec.get("examples_at_fault") is not None:
            rec["examples_lost"] = max(0, rec["examples_at_fault"] - ck["examples_seen"])
        if rec.get("fault_wall") is not None:
            rec["seconds_lost"] = round(max(0.0, rec["fault_wall"] - ck["mtime"]), 2)
        items = [f"train.max_steps={ck['step'] + a.resume_steps}", "train.max_seconds=0", "train.max_epochs=0"]
        if rec["kind"] == "raise":  # the injected fault must not fire again
            items.append(f"faults.{rec['plan']['flavour']}=-1")
        t0 = time.time()
        job = Job(self.launch_argv(*items, resume=rd), self.env, out_dir / "resume.log", out_dir)
        r = watch(job, None, a.seconds, a.hang_after, self.replicas)
        summary = rd / "summary.json"
        res = {"exit_status": r["exit_status"], "hang": r["hang"], "seconds": r["seconds"],
               "orphans": [] if r["hang"] else job.orphans({})}
        res["finished"] = (r["exit_status"] == 0 and not r["hang"] and summary.exists()
                           and summary.stat().st_mtime >= t0)
        rec["resume"] = res


def impl_env(impl: str) -> dict:
    """The environment that makes ``dbnet launch`` use Open MPI (the venv's) or MPICH (``.venv-mpich``)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if os.geteuid() == 0:  # Open MPI refuses root unless told (containers, CI)
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    if impl == "openmpi":
        env.pop("DBNET_MPIEXEC", None)
        env.pop("MPI4PY_LIBMPI", None)
        return env
    venv = Path(os.environ.get("DBNET_MPICH_VENV", Path(__file__).resolve().parents[1] / ".venv-mpich"))
    exe, lib = venv / "bin" / "mpiexec", venv / "lib" / "libmpi.so.12"
    if not (exe.exists() and lib.exists()):
        from dbnet.errors import DbnetError

        raise DbnetError(f"--impl mpich: no MPICH in {venv} (python -m venv .venv-mpich && .venv-mpich/bin/pip install "
                         f"mpich, or set DBNET_MPICH_VENV)")
    env.update(DBNET_MPIEXEC=str(exe), MPI4PY_LIBMPI=str(lib))
    return env


def totals(runs: list[dict]) -> dict[str, Any]:
    died = [r for r in runs if "resume" in r]
    stops = [r for r in runs if r["kind"] == "stop"]
    lost = [r["examples_lost"] for r in runs if r.get("examples_lost") is not None]
    secs = [r["seconds_lost"] for r in runs if r.get("seconds_lost") is not None]
    return {
        "runs": len(runs),
        "hangs": sum(r["hang"] or r.get("resume", {}).get("hang", False) for r in runs),
        "orphans": sum(len(r["orphans"]) + len(r.get("resume", {}).get("orphans", [])) for r in runs),
        "stops": len(stops), "stops_survived": sum(r["survived"] for r in stops),
        "died": len(died), "resumed": sum(r["resume"]["finished"] for r in died),
        "not_fired": sum(not r.get("fired") for r in runs),
        "max_examples_lost": max(lost, default=None), "max_seconds_lost": max(secs, default=None),
    }


def failed(t: dict) -> bool:
    return bool(t["hangs"] or t["orphans"] or t["resumed"] < t["died"] or t["stops_survived"] < t["stops"])


def _fmt(v, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def _stop_rate(r: dict) -> str:
    """Examples/s while the rank was stopped, as a share of the rate before the stop."""
    before, during = r.get("rate_before_stop"), r.get("rate_during_stop")
    share = "-" if not before or during is None else f"{100 * during / before:.0f}%"
    return share if "evals_during_stop" not in r else f"{share}, {r['evals_during_stop']} evals"


def markdown(runs: list[dict], t: dict, head: str) -> str:
    rows = [head, "",
            "| run | fault | target | at (s) | exit | to exit (s) | hang | orphans | resume | examples lost | s lost | rate in stop |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        res = r.get("resume")
        resumed = "-" if res is None else ("ok" if res["finished"] else f"FAILED ({res.get('error') or res.get('exit_status')})")
        orphans = len(r["orphans"]) + len((res or {}).get("orphans", []))
        hang = "HANG" if r["hang"] or (res or {}).get("hang") else "no"
        rows.append(f"| {r['run']} | {r['fault']}{'' if r.get('fired') else ' (did not fire)'} | rank {r['target_rank']} "
                    f"{r.get('target_role', '?')} | {_fmt(r.get('fault_at'), '.1f')} | {r['exit_status']} | "
                    f"{_fmt(r.get('seconds_to_exit'), '.1f')} | {hang} | {orphans} | {resumed} | "
                    f"{_fmt(r.get('examples_lost'), ',')} | {_fmt(r.get('seconds_lost'), '.1f')} | {_stop_rate(r)} |")
    rows += ["", f"**{t['runs']} runs: {t['hangs']} hangs, {t['orphans']} orphans, stops survived "
                 f"{t['stops_survived']}/{t['stops']}, died and resumed {t['resumed']}/{t['died']}, max examples lost "
                 f"{_fmt(t['max_examples_lost'], ',')}, max seconds lost {_fmt(t['max_seconds_lost'], '.1f')}**"
                 + (f" ({t['not_fired']} faults did not fire)" if t["not_fired"] else "")]
    return "\n".join(rows) + "\n"


def main_chaos(args: argparse.Namespace) -> int:
    """Run the plan, write ``chaos.json`` and ``chaos.md`` into the output directory; 1 if anything failed."""
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds or args.runs < 1:
        from dbnet.errors import DbnetError

        raise DbnetError(f"--kinds {args.kinds!r}: give one or more of {','.join(KINDS)}" if bad or not kinds
                         else f"--runs {args.runs}: need at least 1")
    ch = Chaos(args)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # unwinds: the job is killed
    faults = plan(args.seed, args.runs, kinds, ch.replicas, ch.world, args.raise_steps, ch.partitions)
    ch.out.mkdir(parents=True, exist_ok=True)
    print(f"dbnet chaos: {args.runs} runs of {args.config} ({ch.world} ranks, {args.impl}), seed {args.seed}, "
          f"kinds {','.join(kinds)}; output {ch.out}", flush=True)
    runs = []
    for i, fault in enumerate(faults):
        rec = ch.run_one(i, fault)
        runs.append(rec)
        res, n_orphans = rec.get("resume"), len(rec["orphans"])
        print(f"run {i}: {rec['fault']} rank {rec['target_rank']} {rec.get('target_role', '')}: exit {rec['exit_status']}"
              f"{' HANG' if rec['hang'] else ''}{f' {n_orphans} orphans' if n_orphans else ''}"
              f"{'' if res is None else ', resume ' + ('ok' if res['finished'] else 'FAILED')}", flush=True)
    t = totals(runs)
    head = (f"`dbnet chaos {args.config} --runs {args.runs} --impl {args.impl} --seed {args.seed} --kinds "
            f"{','.join(kinds)}` ({ch.world} ranks, {args.seconds:g} s jobs, checkpoints every "
            f"{args.checkpoint_every:g} s; {socket.gethostname()}, {os.cpu_count()} CPUs)")
    md = markdown(runs, t, head)
    (ch.out / "chaos.json").write_text(json.dumps({"config": str(args.config), "impl": args.impl, "seed": args.seed,
                                                   "kinds": kinds, "seconds": args.seconds, "runs": runs, "totals": t},
                                                  indent=1, default=str) + "\n")
    (ch.out / "chaos.md").write_text(md)
    print(md, end="")
    print(f"written: {ch.out / 'chaos.json'}, {ch.out / 'chaos.md'}")
    return 1 if failed(t) else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a distributed (Downpour) TOML config")
    p.add_argument("--runs", type=int, default=10, help="number of jobs, one fault each (default: 10)")
    p.add_argument("--impl", choices=("openmpi", "mpich"), default="openmpi", help="MPI library (default: openmpi)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault plan (default: 0)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"fault kinds, taken in turn (default: {','.join(KINDS)})")
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/chaos-<time>)")
    p.add_argument("--seconds", type=float, default=20.0, help="each job's train.max_seconds (default: 20)")
    p.add_argument("--checkpoint-every", type=float, default=2.0, metavar="S",
                   help="train.checkpoint_every_seconds of each job (default: 2)")
    p.add_argument("--resume-steps", type=int, default=1000, metavar="N",
                   help="a resumed job runs to its checkpoint's step + N (default: 1000)")
    p.add_argument("--hang-after", type=float, default=30.0, metavar="S",
                   help="a job alive this long past its fault and its deadline is a hang (default: 30)")
    p.add_argument("--raise-steps", type=_step_range, default=(100, 3000), metavar="LO,HI",
                   help="raise faults fire at a step drawn from [LO, HI] (default: 100,3000)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key of every job (repeatable)")


def _step_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LO,HI (two integers)") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= LO <= HI")
    return lo, hi


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``chaos`` to the ``dbnet`` command line."""
    p = subparsers.add_parser("chaos", help="fault injection: kill, stop or crash a rank of N short jobs, then resume",
                              description="Fault injection: N short Downpour jobs, each with one SIGKILL, SIGSTOP "
                                          "or injected exception of a random rank; the job that died is resumed. "
                                          "Writes chaos.json and chaos.md (see python -m pydoc dbnet.chaos).")
    add_arguments(p)
    p.set_defaults(func=main_chaos)


def main(argv: list[str] | None = None) -> int:
    from dbnet.errors import DbnetError

    p = argparse.ArgumentParser(prog="dbnet")
    register(p.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = p.parse_args(["chaos", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except DbnetError as e:
        print(f"dbnet: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
