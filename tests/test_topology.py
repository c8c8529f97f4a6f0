"""Pure partitioning and layout functions: no MPI needed."""

import pytest

from dbnet.partition import balanced_range, shard_slices
from dbnet.ps.layout import HEADER, SLOT_SIZE, Ctrl, Slot, shard_layouts, slot
from dbnet.topology import Role, rank_layout, size_error, world_size


@pytest.mark.parametrize("n", [0, 1, 7, 21, 22, 28, 29, 1000])
@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_shard_slices_tile_and_balance(n, parts):
    slices = shard_slices(n, parts)
    assert slices[0].start == 0 and slices[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(slices, slices[1:]))
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n
    assert [balanced_range(n, parts, k) for k in range(parts)] == [(s.start, s.stop) for s in slices]


def test_balanced_range_rejects_bad_arguments():
    with pytest.raises(ValueError):
        balanced_range(10, 0, 0)
    with pytest.raises(ValueError):
        balanced_range(10, 3, 3)


def test_rank_layout_puts_replicas_first_then_shards():
    roles = rank_layout(shards=2, replicas=3)
    assert [r.role for r in roles] == [Role.REPLICA] * 3 + [Role.SHARD] * 2
    assert [r.replica_id for r in roles[:3]] == [0, 1, 2] and [r.shard_id for r in roles[3:]] == [0, 1]
    assert world_size(2, 3) == 5 and world_size(2, 3, 2, coordinator=True) == 9
    assert rank_layout(1, 2, 2)[3].partition_id == 1


def test_size_error_names_the_rule_and_the_fix():
    assert size_error(2, 3, 1, False, 6) == (
        "need 5 ranks (2 shards + 3 replicas x 1 partition), got 6: run mpiexec -n 5 (or dbnet launch CONFIG) "
        "or set topology.replicas = 4"
    )


def test_shard_window_layout():
    layouts = shard_layouts(n_params=10, shards=3, n_state=1, replicas=2)
    assert [(L.lo, L.n) for L in layouts] == [(0, 4), (4, 3), (7, 3)]
    L = layouts[0]
    assert L.data_size == 4 * (1 + 1 + 2 * 2) and L.state_offset(0) == 4
    assert [L.inbox_offset(0, p) for p in (1, 2, 3)] == [8, 12, 8] and L.inbox_offset(1, 1) == 16
    assert L.ctrl_size == HEADER + 2 * SLOT_SIZE
    assert slot(1, Slot.APPLIED_SEQ) == HEADER + SLOT_SIZE + 1 and SLOT_SIZE == Slot.BASE_VERSION + 2
    assert max(Ctrl) < HEADER and max(Slot) < SLOT_SIZE
