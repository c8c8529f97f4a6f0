"""The parameter server's push / apply / fetch / snapshot protocol on 3 to 5 ranks, both MPI libraries.

The cases live in tests/mpi_ps_protocol.py (run under a real mpiexec): exact
results of the sharded update rules against single-process application,
bit for bit; a replica that claimed slots and stopped (no lock held) does not
stall the others; NaN gradients are consumed, never applied; a shard never
waits longer than ``snapshot_seconds`` for a stopped lead; two replicas pushing
at once through one slot lose nothing; checkpoint reads under a stream of
pushes are never torn.  The ``part-*`` cases run one replica as two
partitions (clients) with ranges that split a shard: results bit-identical
to single-process, a client's pushes reach only the shards it overlaps, and both
transports work on a partition's range.

The pure parts (which shards a range overlaps, client numbers) are tested
here without MPI.
"""

from pathlib import Path

import pytest

from dbnet.partition import shard_slices
from dbnet.ps.layout import SLOT_FIELDS, SlotField, client_id, overlaps, shard_layouts
from mpirun import run_mpi

SCRIPT = str(Path(__file__).with_name("mpi_ps_protocol.py"))
CASES = ["exact-sgd", "exact-momentum", "exact-adagrad", "stalled-claim", "nan-rejected", "snapshot-broken",
         "concurrent", "snapshot-consistent"]


@pytest.mark.parametrize("n, impl", [(3, "openmpi"), (4, "openmpi"), (4, "mpich")])
@pytest.mark.parametrize("case", CASES)
def test_ps_protocol(case, n, impl):
    r = run_mpi(n, [case], impl=impl, timeout=60, script=SCRIPT)
    assert r.returncode == 0 and f"PASS {case}" in r.stdout, r.stdout + r.stderr


PART_CASES = ["part-exact-sgd", "part-exact-momentum", "part-exact-adagrad", "part-touch", "part-transport"]


@pytest.mark.parametrize("n, impl", [(3, "openmpi"), (4, "openmpi"), (5, "openmpi"), (3, "mpich"), (5, "mpich")])
@pytest.mark.parametrize("case", PART_CASES)
def test_ps_partitions(case, n, impl):
    r = run_mpi(n, [case], impl=impl, timeout=60, script=SCRIPT)
    assert r.returncode == 0 and f"PASS {case}" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("n", [10, 30, 41])
@pytest.mark.parametrize("shards", [1, 3, 4])
def test_overlaps_cover_each_range_once(n, shards):
    """Every range [lo, hi) is covered exactly once by the overlapping shards' parts, each inside its
    shard's slice, placed at its offset in the client's buffer; the shards are exactly those meeting it."""
    layouts = shard_layouts(n, shards, 1, 2, 3)
    slices = shard_slices(n, shards)
    for lo in range(n + 1):
        for hi in range(lo, n + 1):
            parts = overlaps(layouts, lo, hi)
            assert [o.shard for o in parts] == [k for k, s in enumerate(slices) if max(s.start, lo) < min(s.stop, hi)]
            covered = []
            for o in parts:
                L = layouts[o.shard]
                assert 0 <= o.lo < o.hi <= L.n
                covered += [(L.lo + i, o.at + i - o.lo) for i in range(o.lo, o.hi)]
            assert covered == [(i, i - lo) for i in range(lo, hi)]


def test_whole_range_is_every_shard_whole():
    layouts = shard_layouts(1003, 3, 0, 4, 2)
    assert [(o.shard, o.lo, o.hi, o.at) for o in overlaps(layouts, 0, 1003)] == \
        [(k, 0, L.n, L.lo) for k, L in enumerate(layouts)]


def test_clients_and_ctrl_size():
    assert [client_id(r, p, 3) for r in range(2) for p in range(3)] == list(range(6))
    with pytest.raises(ValueError, match="partition"):
        client_id(0, 3, 3)
    L = shard_layouts(100, 2, 1, 4, replicas=2, partitions=3)[1]  # 6 clients
    assert L.ctrl_size == 8 + SLOT_FIELDS * 4 + 6
    assert L.applied(5) == L.ctrl_size - 1
    assert L.slot_field(3, SlotField.HI) == 8 + 3 * SLOT_FIELDS + SlotField.HI < L.applied(0)
    assert L.bytes == 4 * 50 * (1 + 1 + 4) + 8 * L.ctrl_size
