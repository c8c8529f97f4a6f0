"""Model partitions: the pure plan (no MPI), and one replica as P ranks against the whole network.

The MPI cases live in tests/mpi_partitions.py (run under a real mpiexec,
both libraries, odd sizes included): loss, hits and gradients of P = 2..5
partitions equal the single-process network's (image-layer outputs bit for
bit; gradients to 2e-6 of the largest element, since the dense split and
the returned halo gradients sum in another order).
"""

from pathlib import Path

import numpy as np
import pytest

from dbnet.model import NetSpec, init_params
from dbnet.mp.plan import exchanges, from_canonical, part_ranges, part_sizes, plan, to_canonical
from mpirun import run_mpi

SCRIPT = str(Path(__file__).with_name("mpi_partitions.py"))
LC = NetSpec.build((28, 28), ["local 5 4", "maxpool 2", "local 3 6 stride 2", "avgpool 2 stride 1"], [12], 10, "relu")
ODD = NetSpec.build((17, 13), ["local 3 3", "maxpool 3 stride 2", "local 2 5"], [], 4, "relu")
MLP = NetSpec.mlp(20, [7, 5], 3, "relu")


@pytest.mark.parametrize("spec", [LC, ODD, MLP], ids=["lc", "odd", "mlp"])
@pytest.mark.parametrize("P", [1, 2, 3, 4, 7])
def test_plan_covers_every_unit_once(spec, P):
    """Each layer's rows/units are cut into P contiguous balanced parts, and partition-major parameters are a
    permutation of the canonical vector that round-trips."""
    parts = plan(spec, P)
    for i, layer in enumerate(spec.layers):
        bounds = [(parts[p][i].lo, parts[p][i].hi) for p in range(P)]
        n = layer.out_shape[0] if hasattr(layer, "out_shape") else layer.n_out
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(h - lo for lo, h in bounds) - min(h - lo for lo, h in bounds) <= 1
    assert sum(part_sizes(spec, P)) == spec.n_params
    ranges = part_ranges(spec, P)
    assert ranges[0][0] == 0 and ranges[-1][1] == spec.n_params
    canon = np.arange(spec.n_params, dtype=np.float32)
    pm = from_canonical(spec, P, canon)
    assert sorted(pm.tolist()) == canon.tolist()
    assert np.array_equal(to_canonical(spec, P, pm), canon)
    for p, (lo, hi) in enumerate(ranges):
        assert np.array_equal(from_canonical(spec, P, canon, part=p), pm[lo:hi])


@pytest.mark.parametrize("spec", [LC, ODD], ids=["lc", "odd"])
@pytest.mark.parametrize("P", [2, 3, 5])
def test_halo_is_sent_once_to_each_partition_that_needs_it(spec, P):
    """What p receives from q is exactly what q sends to p; an image layer's partition receives only the rows
    its patches read that it does not own, and nothing it owns."""
    parts = plan(spec, P)
    ex = [exchanges(spec, P, p) for p in range(P)]
    for i in range(1, len(spec.layers)):
        for p in range(P):
            for q, lo, hi in ex[p][i].recv:
                assert (p, lo, hi) in ex[q][i].send
                own = parts[p][i - 1].own
                assert hi <= own[0] or lo >= own[1]  # never a column it owns
                assert parts[q][i - 1].own[0] <= lo < hi <= parts[q][i - 1].own[1]
            need = parts[p][i].need
            got = sum(hi - lo for _, lo, hi in ex[p][i].recv)
            own = parts[p][i - 1].own
            mine = max(0, min(need[1], own[1]) - max(need[0], own[0]))
            assert got + mine == need[1] - need[0]  # every needed column exactly once


def test_image_halo_is_only_the_boundary_rows():
    """2 partitions, two 5x5 LC layers on 28x28: the second layer's band (output rows 0-9) reads input rows
    0-13, of which partition 0 owns 0-11: a halo of 2 rows from partition 1; the dense softmax then needs
    partition 1's whole band (10 rows of 20 x 4)."""
    spec = NetSpec.build((28, 28), ["local 5 4", "local 5 4"], [], 10, "relu")
    ex = exchanges(spec, 2, 0)
    row = 24 * 4  # one row of the first LC output (24 wide, 4 maps)
    assert [(q, lo // row, hi // row) for q, lo, hi in ex[1].recv] == [(1, 12, 14)]
    assert [(q, lo // row, hi // row) for q, lo, hi in ex[1].send] == [(1, 10, 12)]  # partition 1 reads 10-23
    assert [(q, hi - lo) for q, lo, hi in ex[2].recv] == [(1, 10 * 20 * 4)]


def test_dense_split_needs_all_inputs():
    ex = exchanges(MLP, 3, 1)
    assert sum(hi - lo for _, lo, hi in ex[1].recv) == 7 - (plan(MLP, 3)[1][0].hi - plan(MLP, 3)[1][0].lo)


@pytest.mark.parametrize("case, n, impl", [
    ("lc", 2, "openmpi"), ("lc", 3, "openmpi"), ("lc", 4, "openmpi"), ("lc", 2, "mpich"), ("lc", 3, "mpich"),
    ("lc-head", 3, "openmpi"), ("lc-head", 4, "mpich"), ("mlp", 3, "openmpi"), ("tiny", 5, "openmpi"),
    ("tiny", 4, "mpich"), ("gap", 3, "openmpi"), ("ties", 3, "openmpi"), ("ties", 2, "mpich"),
])
def test_partitions_match_whole_network(case, n, impl):
    r = run_mpi(n, [case], impl=impl, timeout=90, script=SCRIPT)
    assert r.returncode == 0 and f"PASS {case}" in r.stdout, r.stdout + r.stderr
