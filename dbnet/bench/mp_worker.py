"""MPI worker of the ``mp`` benchmark: one training step of a model split into P partitions, and a ping-pong.

Run by :mod:`dbnet.bench.mp` as

* ``mpiexec -n P python -m dbnet.bench.mp_worker step MODELS WARMUP SAMPLES STEPS [check]``: for each
  model named in MODELS (comma-separated keys of :func:`dbnet.bench.mp.models`, ``quick:`` prefixed for
  the quick sizes), every rank is partition ``rank`` of P with one thread; after WARMUP steps, SAMPLES
  times: a barrier, STEPS steps of ``loss_and_grad``, and the slowest rank's seconds per step, wall and
  CPU (``time.thread_time``: the time the rank ran, descheduled time left out; one thread does all the
  work, numba and BLAS being set to 1; spinning on an exchange counts).  With
  ``check``, rank 0 also runs the unpartitioned network on the same batch and compares loss and
  gradient (the partitions' gradients gathered into canonical order).
* ``mpiexec -n 2 python -m dbnet.bench.mp_worker pingpong``: half the round trip of ``Send``/``Recv``
  between ranks 0 and 1 for a few message sizes (medians).

Rank 0 prints one JSON line.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import dbnet  # noqa: F401 - BLAS/OpenMP settings before numpy

import numpy as np

from dbnet import mpi
from dbnet.threads import set_threads

PING_SIZES = (8, 4096, 65536, 1 << 20, 4 << 20)


def pingpong(comm, repeats: int = 200) -> dict:
    """``{bytes: {"median", "p10", "min"}}``: one-way seconds (half round trips) between ranks 0 and 1."""
    out = {}
    rank = comm.Get_rank()
    for size in PING_SIZES:
        buf = np.zeros(size, np.uint8)
        n = repeats if size <= 65536 else max(30, repeats // 4)
        ts = []
        mpi.barrier(comm, 60, "the other rank to start the ping-pong")
        for i in range(n + 5):
            t = time.perf_counter()
            if rank == 0:
                comm.Send(buf, 1, 7)
                comm.Recv(buf, 1, 7)
            elif rank == 1:
                comm.Recv(buf, 0, 7)
                comm.Send(buf, 0, 7)
            if i >= 5:
                ts.append((time.perf_counter() - t) / 2)
        ts.sort()
        out[size] = {"median": statistics.median(ts), "p10": ts[len(ts) // 10], "min": ts[0]}
    return out


def step(comm, names: list[str], warmup: int, samples: int, steps: int, check: bool) -> dict:
    from dbnet.bench.mp import models
    from dbnet.model import init_params
    from dbnet.mp.plan import from_canonical, part_ranges, to_canonical
    from dbnet.network import Network

    P, p = comm.Get_size(), comm.Get_rank()
    res = {}
    for name in names:
        quick = name.startswith("quick:")
        spec, batch, _ = models(quick)[name.removeprefix("quick:")]
        canon = init_params(spec, 0)
        params = from_canonical(spec, P, canon, part=p) if P > 1 else canon
        grad = np.empty_like(params)
        rng = np.random.default_rng(1)
        x = rng.random((batch, spec.n_inputs), dtype=np.float32)
        y = rng.integers(0, spec.n_classes, batch).astype(np.int32)
        net = Network(spec, batch, comm=comm if P > 1 else None)
        for _ in range(warmup):
            net.loss_and_grad(params, x, y, grad)
        for k in net.stats:
            net.stats[k] = 0 if isinstance(net.stats[k], int) else 0.0
        per_step, cpu_step = [], []
        for _ in range(samples):
            mpi.barrier(comm, 300, "the partitions to start a sample")
            t, c = time.perf_counter(), time.thread_time()
            for _ in range(steps):
                loss, hits = net.loss_and_grad(params, x, y, grad)
            mine, cpu = (time.perf_counter() - t) / steps, (time.thread_time() - c) / steps
            per_step.append(comm.allreduce(mine, op=_max()))
            cpu_step.append(comm.allreduce(cpu, op=_max()))
        n = samples * steps
        stats = comm.gather({k: v / n for k, v in net.stats.items()}, root=0)
        out = {"parts": P, "batch": batch, "seconds_per_step": per_step, "median_s": statistics.median(per_step),
               "cpu_seconds_per_step": cpu_step,
               "stats_per_step": stats, "loss": loss}
        if check:
            grads = comm.gather(grad, root=0)
            if p == 0:
                full = np.concatenate(grads) if P > 1 else grads[0]
                assert [hi - lo for lo, hi in part_ranges(spec, P)] == [g.size for g in grads]
                got = to_canonical(spec, P, full) if P > 1 else full
                ref_net = Network(spec, batch)
                ref = np.empty_like(canon)
                ref_loss, _ = ref_net.loss_and_grad(canon, x, y, ref)
                scale = float(np.abs(ref).max()) or 1.0
                out["check"] = {"loss_serial": ref_loss, "loss_abs_diff": abs(ref_loss - loss),
                                "grad_max_abs_diff": float(np.abs(got - ref).max()), "grad_max_abs": scale,
                                "ok": bool(abs(ref_loss - loss) <= 1e-4 * abs(ref_loss) + 1e-5
                                           and np.abs(got - ref).max() <= 1e-4 * scale + 1e-6)}
        res[name.removeprefix("quick:")] = out
    return res


def _max():
    from mpi4py import MPI

    return MPI.MAX


def main(argv: list[str]) -> None:
    MPI = mpi.init()
    comm = MPI.COMM_WORLD.Dup()
    set_threads(1)  # one core per partition
    if argv[1] == "pingpong":
        out = {"pingpong": pingpong(comm)}
    else:
        names = argv[2].split(",")
        out = step(comm, names, int(argv[3]), int(argv[4]), int(argv[5]), len(argv) > 6 and argv[6] == "check")
    if comm.Get_rank() == 0:
        print(json.dumps(out), flush=True)
    comm.Free()


def run(argv: list[str]) -> None:
    try:
        main(argv)
    except BaseException as e:  # noqa: BLE001 - end every rank, never hang
        from mpi4py import MPI

        mpi.fail(MPI.COMM_WORLD, "mp benchmark", e)


if __name__ == "__main__":
    run(sys.argv)
