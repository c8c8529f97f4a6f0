"""Run under mpiexec -n P: one replica split into P partitions against the whole network in one process.

Every rank builds the same spec, parameters (canonical, from the seed) and
batch; the partitions compute loss, hits and gradients collectively; rank 0
gathers the gradient, converts it to the canonical order and compares it with
the single-process Network's.  The image layers' forward is bit-identical
(each output's sum is the same); the dense split and the returned halo
gradients change summation order, hence the tolerance.  Prints ``PASS case``.
"""

import sys

import numpy as np
from mpi4py import MPI

from dbnet.model import NetSpec, init_params
from dbnet.mp.plan import from_canonical, part_ranges, plan, to_canonical
from dbnet.network import Network

SPECS = {
    "mlp": ((20,), [], [7, 5], 3),
    "lc": ((28, 28), ["local 5 4", "maxpool 2", "local 3 6 stride 2", "avgpool 2 stride 1"], [12], 10),
    "lc-head": ((17, 13), ["local 3 3", "maxpool 3 stride 2", "local 2 5"], [], 4),  # odd sizes, overlapping pool
    "tiny": ((9, 9), ["local 3 2 stride 2", "maxpool 2"], [3], 2),  # fewer rows than partitions for P >= 4
    "gap": ((20, 20, 2), ["local 3 2 stride 4", "maxpool 2 stride 3"], [5], 6),  # stride > k: rows no one reads
    "ties": ((28, 28), ["local 5 4", "maxpool 2"], [], 10),  # all-zero parameters: every logit ties
}
RTOL = 2e-6  # of the largest gradient element; measured: 1.7e-7


def main(case: str) -> None:
    comm = MPI.COMM_WORLD
    P, p = comm.size, comm.rank
    shape, feats, hidden, classes = SPECS[case]
    spec = NetSpec.build(shape, feats, hidden, classes, "relu")
    canon = init_params(spec, 1)
    canon += np.float32(0.01) * np.random.default_rng(2).standard_normal(canon.size).astype(np.float32)  # biases != 0
    if case == "ties":
        canon[:] = 0  # the first maximum must win on every partition as in one process: class 0
    rng = np.random.default_rng(0)
    B = 6
    x = rng.standard_normal((B, spec.n_inputs)).astype(np.float32)
    y = rng.integers(0, classes, B).astype(np.int32)
    ref = Network(spec, B)
    y[: B // 2] = ref.forward(canon, x)[: B // 2].argmax(axis=1)  # planted hits: the split argmax must find them
    g_ref = np.empty_like(canon)
    loss_ref, hits_ref = ref.loss_and_grad(canon, x, y, g_ref)
    ref.forward(canon, x)
    net = Network(spec, B, comm=comm)
    mine = from_canonical(spec, P, canon, part=p)
    g = np.full_like(mine, np.nan)
    ok = True
    # the image layers' outputs: this partition's band equals the same rows of the whole network's, bit for bit
    net.forward(mine, x)
    for i, layer in enumerate(spec.layers):
        if hasattr(layer, "out_shape"):
            lp = plan(spec, P)[p][i]
            whole = ref._out[i][:B, lp.own[0]: lp.own[1]]
            if not np.array_equal(net._out[i][:B], whole):
                print(f"rank {p}: layer {i} band differs from the whole network's", flush=True)
                ok = False
    loss, hits = net.loss_and_grad(mine, x, y, g)
    ranges = part_ranges(spec, P)
    full = np.empty(spec.n_params, np.float32) if p == 0 else None
    comm.Gatherv([g, MPI.FLOAT], [full, ([b - a for a, b in ranges], [a for a, _ in ranges]), MPI.FLOAT]
                 if p == 0 else None, root=0)
    losses = comm.gather((loss, hits), root=0)
    if p == 0:
        gc = to_canonical(spec, P, full)
        err = float(np.abs(gc - g_ref).max() / np.abs(g_ref).max())
        same = all(h == hits_ref and abs(lo - loss_ref) <= 1e-6 * abs(loss_ref) for lo, h in losses)
        print(f"{case} P={P}: loss {loss:.9g} vs {loss_ref:.9g}, hits {hits} vs {hits_ref}, "
              f"gradient max error {err:.2e} of its largest element", flush=True)
        ok = ok and same and err <= RTOL and np.isfinite(gc).all()
    ok = comm.allreduce(ok, op=MPI.LAND)
    if p == 0 and ok:
        print(f"PASS {case}", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(sys.argv[1])
