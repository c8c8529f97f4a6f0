"""MPI worker of the ``ps`` benchmark: fetch + push bandwidth against a shard applying updates.

Run by :mod:`dbnet.bench.ps` as
``mpiexec -n R+S python -m dbnet.bench.ps_worker N_PARAMS SECONDS S RULE`` (RULE: sgd or adagrad).
Each replica first measures ``np.copyto`` of an array of the model's size
(the copy rate, same process, same run), then loops ``fetch; push`` for
SECONDS without computing, so the number is the parameter server's
transport; the shards apply every push with Adagrad meanwhile.  Rank 0
prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time

import dbnet  # noqa: F401 - BLAS/OpenMP settings before numpy

import numpy as np

from dbnet import mpi
from dbnet.config import OptimizerConfig
from dbnet.optim import UpdateRule
from dbnet.ps import PSClient, PSWindows, ShardServer
from dbnet.threads import per_rank, set_threads
from dbnet.topology import Role, build_topology


def copy_rate(n: int, repeats: int = 5) -> float:
    """Bytes copied per second by ``np.copyto`` of ``n`` float32 (median); counts each byte once."""
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        ts.append(time.perf_counter() - t)
    return src.nbytes / float(np.median(ts))


def main(n_params: int, seconds: float, shards: int, rule_name: str = "adagrad") -> None:
    MPI = mpi.init()
    world = MPI.COMM_WORLD
    replicas = world.Get_size() - shards
    topo = build_topology(world, shards, replicas)
    set_threads(per_rank(topo.comm))
    rule = UpdateRule(OptimizerConfig(rule=rule_name, lr=1e-3))
    windows = PSWindows(topo, n_params, len(rule.state_names), slots=4)
    out = {}
    if topo.role is Role.SHARD:
        L = windows.layout
        server = ShardServer(windows, rule, np.zeros(L.n, np.float32), None)
        mpi.barrier(topo.comm, 300, "start")
        # serve until every replica has finished its rounds and drained (the barrier completes)
        mpi.barrier(topo.comm, seconds + 300, "the replicas to finish", idle=server.serve_once)
        out = {"role": "shard", "updates": server.version, "apply_seconds": server.apply_seconds, "n": L.n}
    else:
        client = PSClient(windows, topo.me.replica_id, timeout=120)
        rate = copy_rate(n_params)
        w = np.zeros(n_params, np.float32)
        g = np.full(n_params, 1e-3, np.float32)
        mpi.barrier(topo.comm, 300, "start")
        t0 = time.perf_counter()
        rounds = 0
        while time.perf_counter() - t0 < seconds:
            base = client.fetch(w, own_writes=False)
            client.push(g, base)
            rounds += 1
        dt = time.perf_counter() - t0
        client.drain()
        out = {"role": "replica", "rounds": rounds, "seconds": dt, "copy_bytes_per_s": rate,
               "bytes_per_s": (client.bytes_fetched + client.bytes_pushed) / dt,
               "fetch_s": client.fetch_seconds, "push_s": client.push_seconds, "wait_s": client.wait_seconds}
        mpi.barrier(topo.comm, 300, "the replicas to finish")
    stats = topo.comm.gather(out, root=0)
    windows.free()
    if topo.rank == 0:
        print(json.dumps({"n_params": n_params, "shards": shards, "replicas": replicas, "ranks": stats}), flush=True)


def run(argv: list[str]) -> None:
    try:
        main(int(argv[1]), float(argv[2]), int(argv[3]), *argv[4:5])
    except BaseException as e:  # noqa: BLE001 - end every rank, never hang
        from mpi4py import MPI

        mpi.fail(MPI.COMM_WORLD, "ps benchmark", e)


if __name__ == "__main__":
    run(sys.argv)
