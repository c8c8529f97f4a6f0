"""MPI unit tests of the parameter-server protocol, run as ``mpiexec -n 3 python tests/mpi_ps_protocol.py CASE``.

World: replicas 0 and 1 (ranks 0, 1) and one shard (rank 2), or with
``-n 4`` two shards; the ``part-*`` cases make ranks 0 and 1 the two
partitions of one replica instead, each with its own range of the vector.
No runtime, no data: the windows, the shard server and the client only,
with a tiny parameter vector and hand-made gradients.
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


def cut(layouts) -> int:
    """Where partition 1 starts: a third into the last shard (which the two partitions then share; the
    other shards are partition 0's alone), so the two ranges have uneven sizes."""
    last = layouts[-1]
    return last.lo + last.n // 3


def setup(rule: str, slots: int, snapshot_seconds: float = 5.0, lr: float = 0.1, zero: bool = False,
          partitions: int = 1):
    """Two clients and size - 2 shards: replicas 0 and 1, or (``partitions=2``) the two partitions of
    replica 0, partition 0 owning ``[0, cut)`` and partition 1 ``[cut, N)``."""
    MPI = mpi.init()
    world = MPI.COMM_WORLD
    shards = world.Get_size() - 2
    topo = build_topology(world, shards, 2 // partitions, partitions)
    urule = UpdateRule(OptimizerConfig(rule=rule, lr=lr))
    windows = PSWindows(topo, N, len(urule.state_names), slots)
    topo.comm.Barrier()
    server = client = None
    init = np.zeros(N, np.float32) if zero else np.linspace(-1, 1, N).astype(np.float32)
    if topo.role is Role.SHARD:
        L = windows.layout
        server = ShardServer(windows, urule, init[L.lo: L.hi], None, 0, apply_chunk=100,
                             snapshot_seconds=snapshot_seconds)
    elif partitions == 1:
        client = PSClient(windows, topo.me.replica_id, TIMEOUT)
    else:
        p = topo.me.partition_id
        c = cut(windows.layouts)
        lo, hi = (0, c) if p == 0 else (c, N)
        client = PSClient(windows, windows.client_of(topo.me.replica_id, p), TIMEOUT, lo, hi)
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


def touching(windows, lo: int, hi: int) -> list[int]:
    """The shards whose slice meets [lo, hi) (computed here independently of the client)."""
    return [k for k, L in enumerate(windows.layouts) if max(L.lo, lo) < min(L.hi, hi)]


def case_part_exact(rule: str) -> list[str]:
    """One replica in two partitions, each fetching and pushing only its own range (the last shard holds
    some of both) K times with read_own_writes and no drain: every fetch sees exactly the partition's own
    previous pushes, and at the end parameters and optimizer state equal the rule applied to the whole
    vector in one process, bit for bit.  Each shard counts only the pushes that reach it, and their
    staleness (per range: the other partition's pushes do not count) is 0."""
    MPI, topo, urule, windows, server, client, init = setup(rule, slots=2, partitions=2)
    K = 20
    errors = []
    if server is not None:
        serve_until(topo, server, topo.comm.Ibarrier())
        if server.staleness[0] != server.version:
            errors.append(f"staleness {server.staleness.tolist()} for {server.version} pushes, expected all 0")
    else:
        lo, hi = client.lo, client.hi
        mine = touching(windows, lo, hi)
        if client.shards != mine:
            errors.append(f"client of [{lo}, {hi}) talks to shards {client.shards}, expected {mine}")
        w, state = init.copy(), urule.init_state(N)  # the single-process reference
        got = np.empty(hi - lo, np.float32)
        for k in range(K):
            base = client.fetch(got)
            if len(base) != len(mine):
                errors.append(f"fetch returned {len(base)} versions for {len(mine)} shards")
            if not np.array_equal(got, w[lo:hi]):
                errors.append(f"fetch {k} of [{lo}, {hi}) is not the partition's {k} pushes applied")
                break
            client.push(grads(0, k)[lo:hi], base)
            urule.apply(w, grads(0, k), state)
        client.drain()
        if [client.seq[k] for k in range(topo.shards)] != [K if k in mine else 0 for k in range(topo.shards)]:
            errors.append(f"pushes per shard {client.seq}")
        for k in range(topo.shards):
            if k not in mine and windows.ctrl.read(topo.shard_ranks[k], windows.layouts[k].applied(client.r)):
                errors.append(f"shard {k} consumed a push of client {client.r}, whose range misses it")
        topo.group.Barrier()  # both partitions' pushes applied
        if topo.is_lead:
            full = np.empty(N, np.float32)
            states = {n: np.empty(N, np.float32) for n in urule.state_names}
            versions = client.snapshot(full, states, urule.state_names)
            c = cut(windows.layouts)
            expect = [K * ((k in touching(windows, 0, c)) + (k in touching(windows, c, N)))
                      for k in range(topo.shards)]
            if versions != expect:
                errors.append(f"versions {versions}, expected {expect}")
            if not np.array_equal(full, w):
                errors.append(f"{rule}: params differ from single-process by up to {np.abs(full - w).max()}")
            for n in urule.state_names:
                if not np.array_equal(states[n], state[n]):
                    errors.append(f"{rule}: state {n} differs")
        topo.comm.Ibarrier().Wait()
    topo.comm.Barrier()
    return errors, topo, windows


def case_part_touch() -> list[str]:
    """Through a pool of ONE slot per shard, partition 0 pushes once (its part of the shared shard's slot
    then holds its gradient), then partition 1 pushes 30 times: the shards outside partition 1's range
    never see it (VERSION and its APPLIED count unchanged, no slot claimed), and the shared shard applies
    partition 1's pushes to partition 1's part only (partition 0's stale data in the slot is not re-applied)."""
    MPI, topo, urule, windows, server, client, init = setup("sgd", slots=1, lr=0.125, zero=True, partitions=2)
    errors = []
    if server is not None:
        serve_until(topo, server, topo.comm.Ibarrier())
    else:
        p, n = topo.me.partition_id, client.n
        if p == 0:
            client.push(np.ones(n, np.float32), [0] * len(client.shards))
            client.drain()
        topo.group.Barrier()
        versions_before = [windows.ctrl.read(rank, Ctrl.VERSION) for rank in topo.shard_ranks]
        topo.group.Barrier()
        if p == 1:
            for _ in range(30):
                client.push(np.full(n, 2, np.float32), [0] * len(client.shards))
            client.drain()
            if client.bytes_pushed != 30 * 4 * n:
                errors.append(f"{client.bytes_pushed} bytes pushed, expected {30 * 4 * n}")
        topo.group.Barrier()
        versions = [windows.ctrl.read(rank, Ctrl.VERSION) for rank in topo.shard_ranks]
        if p == 1:
            for k, rank in enumerate(topo.shard_ranks):
                L = windows.layouts[k]
                if k in client.shards:
                    if versions[k] != versions_before[k] + 30:
                        errors.append(f"shard {k}: version {versions_before[k]} -> {versions[k]}, expected +30")
                    continue
                if versions[k] != versions_before[k]:
                    errors.append(f"shard {k} (outside [{client.lo}, {client.hi})): version "
                                  f"{versions_before[k]} -> {versions[k]}")
                if windows.ctrl.read(rank, L.applied(client.r)) or client.seq[k]:
                    errors.append(f"shard {k} (outside [{client.lo}, {client.hi})) got a push")
        w = np.empty(n, np.float32)
        client.fetch(w, own_writes=False)
        expect = np.float32(-0.125 if p == 0 else -0.125 * 2 * 30)
        if not (w == expect).all():
            errors.append(f"partition {p}'s params {np.unique(w)[:5]}, expected all {expect}")
        topo.comm.Ibarrier().Wait()
    topo.comm.Barrier()
    return errors, topo, windows


def case_part_transport() -> list[str]:
    """Both transports drive a partition's client with buffers of its range only (n = hi - lo): the
    in-thread one with read_own_writes trains exactly as single-process SGD (each step's parameters are
    the reference's, bit for bit); the overlapped one loses no push (integer gradients, lr 1/8: exact)."""
    from dbnet.ps.transport import OverlapTransport, SyncTransport

    MPI, topo, urule, windows, server, client, init = setup("sgd", slots=2, lr=0.125, zero=True, partitions=2)
    errors = []
    if server is not None:
        serve_until(topo, server, topo.comm.Ibarrier())
    else:
        lo, hi, n = client.lo, client.hi, client.n
        examples = []

        def report(k: int, step: int) -> int:
            examples.append(k)
            return sum(examples)

        sync = SyncTransport(client, report, lambda: False, n_fetch=1, read_own_writes=True)
        ref, buf, steps = np.zeros(N, np.float32), np.empty(n, np.float32), 8
        for step in range(steps):
            w = sync.params_for(step, buf)
            if not np.array_equal(w, ref[lo:hi]):
                errors.append(f"SyncTransport step {step}: parameters are not the reference's")
                break
            g = np.floor(8 * grads(0, step))  # integers: every sum is exact in float32
            sync.push(g[lo:hi].copy(), 1, step)
            ref -= np.float32(0.125) * g
        sync.finish()
        client.drain()
        ov = OverlapTransport(client, report, lambda: False, 2, n, TIMEOUT)
        w, g = np.empty(n, np.float32), np.empty(n, np.float32)
        for step in range(steps, 3 * steps):
            w = ov.params_for(step, w)
            g[:] = np.arange(n) % 5 - 2
            g = ov.push(g, 1, step)
            ref[lo:hi] -= np.float32(0.125) * (np.arange(n) % 5 - 2).astype(np.float32)
        ov.finish()
        client.drain()
        if len(examples) != 3 * steps:
            errors.append(f"{len(examples)} pushes reported, expected {3 * steps}")
        got = np.empty(n, np.float32)
        client.fetch(got)
        if not np.array_equal(got, ref[lo:hi]):
            errors.append(f"after OverlapTransport: params differ by up to {np.abs(got - ref[lo:hi]).max()}")
        try:
            OverlapTransport(client, report, lambda: False, 2, N, TIMEOUT)
            errors.append("OverlapTransport took n_params != the client's range length")
        except ValueError:
            pass
        topo.comm.Ibarrier().Wait()
    topo.comm.Barrier()
    return errors, topo, windows


def main(case: str) -> int:
    cases = {"exact-sgd": lambda: case_exact("sgd"), "exact-momentum": lambda: case_exact("momentum"),
             "exact-adagrad": lambda: case_exact("adagrad"), "stalled-claim": case_stalled_claim,
             "nan-rejected": case_nan_rejected, "snapshot-broken": case_snapshot_broken,
             "concurrent": case_concurrent, "snapshot-consistent": case_snapshot_consistent,
             "part-exact-sgd": lambda: case_part_exact("sgd"),
             "part-exact-momentum": lambda: case_part_exact("momentum"),
             "part-exact-adagrad": lambda: case_part_exact("adagrad"), "part-touch": case_part_touch,
             "part-transport": case_part_transport}
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
