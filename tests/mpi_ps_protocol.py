"""MPI unit tests of the parameter-server protocol, run as ``mpiexec -n 3 python tests/mpi_ps_protocol.py CASE``.

World: replicas 0 and 1 (ranks 0, 1) and one shard (rank 2), or with
``-n 4`` two shards.  No runtime, no data: the windows, the shard server
and the client only, with a tiny parameter vector and hand-made gradients.
Every rank ends with the same verdict (``allreduce`` of failures) and
prints ``PASS CASE`` on rank 0; any failure exits non-zero.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from dbnet import mpi
from dbnet.config import OptimizerConfig
from dbnet.optim import UpdateRule
from dbnet.ps import PSClient, PSWindows, ShardServer
from dbnet.ps.layout import Ctrl
from dbnet.topology import Role, build_topology

N = 1003  # odd: uneven slices
TIMEOUT = 30.0


def setup(rule: str, slots: int, snapshot_seconds: float = 5.0, lr: float = 0.1, zero: bool = False):
    MPI = mpi.init()
    world = MPI.COMM_WORLD
    shards = world.Get_size() - 2
    topo = build_topology(world, shards, 2)
    urule = UpdateRule(OptimizerConfig(rule=rule, lr=lr))
    windows = PSWindows(topo, N, len(urule.state_names), slots)
    topo.comm.Barrier()
    server = client = None
    init = np.zeros(N, np.float32) if zero else np.linspace(-1, 1, N).astype(np.float32)
    if topo.role is Role.SHARD:
        L = windows.layout
        server = ShardServer(windows, urule, init[L.lo: L.hi], None, 0, apply_chunk=100,
                             snapshot_seconds=snapshot_seconds)
    else:
        client = PSClient(windows, topo.me.replica_id, TIMEOUT)
    topo.comm.Barrier()
    return MPI, topo, urule, windows, server, client, init


def serve_until(topo, server, flag):
    """Shard: serve until the replicas' barrier completes (they are done)."""
    req = flag
    while not req.Test():
        if not server.serve_once():
            time.sleep(1e-4)
    while server.serve_once():
        pass


def grads(r: int, k: int) -> np.ndarray:
    return np.random.default_rng(100 * r + k).standard_normal(N).astype(np.float32)


def case_exact(rule: str) -> list[str]:
    """Replica 0 pushes K gradients, waiting for each to be applied: the shards' result equals the rule
    applied to the whole vector in one process, bit for bit (the rule is element-wise)."""
    MPI, topo, urule, windows, server, client, init = setup(rule, slots=2)
    K = 20
    errors = []
    if server is not None:
        serve_until(topo, server, topo.comm.Ibarrier())
    else:
        if topo.me.replica_id == 0:
            for k in range(K):
                base = client.fetch(np.empty(N, np.float32))
                client.push(grads(0, k), base)
                client.drain()
            w, state = init.copy(), urule.init_state(N)
            for k in range(K):
                urule.apply(w, grads(0, k), state)
            got = np.empty(N, np.float32)
            states = {n: np.empty(N, np.float32) for n in urule.state_names}
            versions = client.snapshot(got, states, urule.state_names)  # the shards are still serving
            if versions != [K] * topo.shards:
                errors.append(f"versions {versions}, expected {[K] * topo.shards}")
            if not np.array_equal(got, w):
                errors.append(f"{rule}: params differ from single-process by up to {np.abs(got - w).max()}")
            for n in urule.state_names:
                if not np.array_equal(states[n], state[n]):
                    errors.append(f"{rule}: state {n} differs")
        topo.comm.Ibarrier().Wait()
    topo.comm.Barrier()
    return errors, topo, windows


def case_stalled_claim() -> list[str]:
    """Replica 1 claims a slot on every shard and never fills it (a replica stopped mid-push, holding no
    lock): replica 0 still pushes 50 times through the remaining slot, and the shard applies all 50."""
    MPI, topo, urule, windows, server, client, init = setup("sgd", slots=2)
    errors = []
    if server is not None:
        serve_until(topo, server, topo.comm.Ibarrier())
        if server.version != 50:
            errors.append(f"shard applied {server.version} pushes, expected 50")
    else:
        if topo.me.replica_id == 1:
            held = [client._claim(k) for k in range(topo.shards)]  # and never marks them full
            assert all(j is not None for j in held)
        topo.group.Barrier()  # replica 1 holds its slots before replica 0 starts
        if topo.me.replica_id == 0:
            t0 = time.monotonic()
            for k in range(50):
                client.push(grads(0, k), [0] * topo.shards)
            client.drain()
            if time.monotonic() - t0 > 10:
                errors.append(f"50 pushes took {time.monotonic() - t0:.1f} s")
        topo.comm.Ibarrier().Wait()
    topo.comm.Barrier()
    return errors, topo, windows


def case_nan_rejected() -> list[str]:
    """A gradient with a NaN is consumed (APPLIED advances) but never applied by the shard that owns
    the NaN; the other shards apply their (finite) slices."""
    MPI, topo, urule, windows, server, client, init = setup("sgd", slots=2)
    errors = []
    bad = grads(1, 0)
    bad[N // 2] = np.nan
    lr = np.float32(0.1)
    if server is not None:
        serve_until(topo, server, topo.comm.Ibarrier())
        L = windows.layout
        expect = (1, 1) if L.lo <= N // 2 < L.hi else (2, 0)
        if (server.version, server.rejected) != expect:
            errors.append(f"version/rejected {(server.version, server.rejected)}, expected {expect}")
    else:
        if topo.me.replica_id == 1:
            client.push(bad, [0] * topo.shards)
            client.push(grads(1, 1), [0] * topo.shards)
            client.drain()
            w = np.empty(N, np.float32)
            client.fetch(w)
            if not np.isfinite(w).all():
                errors.append("a NaN reached the parameters")
            for L in windows.layouts:
                s = slice(L.lo, L.hi)
                expect = init[s].copy()
                if not L.lo <= N // 2 < L.hi:
                    expect -= lr * bad[s]
                expect -= lr * grads(1, 1)[s]
                if not np.array_equal(w[s], expect):
                    errors.append(f"slice {L.lo}:{L.hi} is not the good pushes applied exactly once")
        topo.comm.Ibarrier().Wait()
    topo.comm.Barrier()
    return errors, topo, windows


def case_snapshot_broken() -> list[str]:
    """A lead that holds a shard paused longer than snapshot_seconds gets None (its read is void),
    and the shard resumes updates on its own."""
    MPI, topo, urule, windows, server, client, init = setup("sgd", slots=2, snapshot_seconds=0.3)
    errors = []
    if server is not None:
        serve_until(topo, server, topo.comm.Ibarrier())
        if topo.me.shard_id == 0 and server.snapshots_broken != 1:
            errors.append("the shard never gave up waiting")
    else:
        if topo.me.replica_id == 0:
            ctrl = windows.ctrl
            rank = topo.shard_ranks[0]
            ctrl.write(rank, Ctrl.SNAP_REQ, 1)
            t0 = time.monotonic()
            while ctrl.read(rank, Ctrl.SNAP_ACK) < 1:
                time.sleep(1e-3)
            time.sleep(0.6)  # the "lead" is stopped: the shard must not wait for it
            if ctrl.read(rank, Ctrl.SNAP_BROKEN) != 1:
                errors.append("SNAP_BROKEN not set after the deadline")
            client.push(grads(0, 0), [0] * topo.shards)
            client.drain()  # the shard applies again
            ctrl.write(rank, Ctrl.SNAP_DONE, 1)
            if time.monotonic() - t0 > 5:
                errors.append("too slow")
            got = np.empty(N, np.float32)
            if client.snapshot(got, {}, ()) is None:
                errors.append("a prompt snapshot read was reported broken")
        topo.comm.Ibarrier().Wait()
    topo.comm.Barrier()
    return errors, topo, windows


def case_concurrent() -> list[str]:
    """Both replicas push 100 times at once through a pool of ONE slot per shard, without waiting:
    every push is applied exactly once (lr 1/8 and integer gradients: exact in float32)."""
    MPI, topo, urule, windows, server, client, init = setup("sgd", slots=1, lr=0.125, zero=True)
    errors = []
    if server is not None:
        serve_until(topo, server, topo.comm.Ibarrier())
        if server.version != 200:
            errors.append(f"shard applied {server.version} pushes, expected 200")
    else:
        r = topo.me.replica_id
        g = np.full(N, r + 1, np.float32)
        for _ in range(100):
            client.push(g, [0] * topo.shards)
        client.drain()
        topo.group.Barrier()  # both replicas' pushes applied
        w = np.empty(N, np.float32)
        client.fetch(w, own_writes=False)
        if not (w == np.float32(-0.125 * (100 * 1 + 100 * 2))).all():
            errors.append(f"params {np.unique(w)[:5]}, expected all -37.5")
        topo.comm.Ibarrier().Wait()
    topo.comm.Barrier()
    return errors, topo, windows


def case_snapshot_consistent() -> list[str]:
    """Checkpoint reads while replica 1 pushes without pause: every snapshot of a shard is one state
    (all its parameters equal -lr x its version: a torn read would mix two versions)."""
    MPI, topo, urule, windows, server, client, init = setup("sgd", slots=2, lr=0.125, zero=True)
    errors = []
    if server is not None:
        serve_until(topo, server, topo.comm.Ibarrier())
    else:
        topo.group.Barrier()
        if topo.me.replica_id == 1:
            g = np.ones(N, np.float32)
            for _ in range(300):
                client.push(g, [0] * topo.shards)
            client.drain()
        else:
            w = np.empty(N, np.float32)
            seen = set()
            for _ in range(40):
                versions = client.snapshot(w, {}, ())
                if versions is None:
                    errors.append("a snapshot was void")
                    continue
                for L, v in zip(windows.layouts, versions):
                    seen.add(v)
                    if not (w[L.lo: L.hi] == np.float32(-0.125 * v)).all():
                        errors.append(f"torn snapshot: version {v}, values {np.unique(w[L.lo: L.hi])[:4]}")
            if len(seen) < 3:
                errors.append(f"the snapshots did not overlap the pushes (versions seen: {sorted(seen)})")
        topo.comm.Ibarrier().Wait()
    topo.comm.Barrier()
    return errors, topo, windows


def main(case: str) -> int:
    cases = {"exact-sgd": lambda: case_exact("sgd"), "exact-momentum": lambda: case_exact("momentum"),
             "exact-adagrad": lambda: case_exact("adagrad"), "stalled-claim": case_stalled_claim,
             "nan-rejected": case_nan_rejected, "snapshot-broken": case_snapshot_broken,
             "concurrent": case_concurrent, "snapshot-consistent": case_snapshot_consistent}
    errors, topo, windows = cases[case]()
    everyone = topo.comm.allgather(errors)
    windows.free()
    bad = [f"rank {r}: {e}" for r, errs in enumerate(everyone) for e in errs]
    if topo.rank == 0:
        print("\n".join(bad) if bad else f"PASS {case}", flush=True)
    topo.free()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
