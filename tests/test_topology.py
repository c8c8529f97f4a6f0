"""Pure partitioning and layout functions: no MPI needed."""

import pytest

from dbnet.partition import balanced_range, shard_slices
from dbnet.ps.layout import HEADER, SLOT_FIELDS, Ctrl, SlotField, shard_layouts
from dbnet.topology import RankRole, Role, lead_of, rank_layout, size_error, world_size


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
    layouts = shard_layouts(n_params=10, shards=3, n_state=1, slots=2, replicas=5)
    assert [(L.lo, L.n) for L in layouts] == [(0, 4), (4, 3), (7, 3)]
    L = layouts[0]
    assert L.data_size == 4 * (1 + 1 + 2) and L.state_offset(0) == 4
    assert [L.slot_offset(j) for j in (0, 1)] == [8, 12]
    assert L.slot_field(1, SlotField.SEQ) == HEADER + SLOT_FIELDS + 2
    assert L.applied(0) == HEADER + 2 * SLOT_FIELDS and L.ctrl_size == HEADER + 2 * SLOT_FIELDS + 5
    assert max(Ctrl) < HEADER and max(SlotField) < SLOT_FIELDS
    assert L.bytes == 4 * L.data_size + 8 * L.ctrl_size


def test_shard_memory_does_not_grow_with_replicas():
    """The inbox is a pool: 1,000 replicas cost 8 bytes each of counters, not copies of the slice."""
    few, many = (shard_layouts(10**6, 4, 1, 4, r)[0] for r in (3, 1000))
    assert few.data_size == many.data_size == 250_000 * (1 + 1 + 4)
    assert many.bytes - few.bytes == 8 * 997


def test_the_lead_is_replica_0_partition_0():
    assert lead_of(rank_layout(2, 3)) == 0 and lead_of(rank_layout(1, 2, 2, coordinator=True)) == 0
    shrunk = [RankRole(Role.SHARD, shard_id=0), RankRole(Role.REPLICA, replica_id=2, partition_id=0),
              RankRole(Role.REPLICA, replica_id=1, partition_id=0)]
    assert lead_of(shrunk) == 2  # a rebuilt topology: the lowest surviving replica leads


def test_registry_world_sizes_agree_with_the_config():
    from dbnet.algorithms import REGISTRY, world_size
    from dbnet.config import Config, TopologyConfig, TrainConfig

    assert set(REGISTRY) == {"sgd", "downpour"}
    cfg = Config(train=TrainConfig(algorithm="downpour", max_steps=1), topology=TopologyConfig(shards=2, replicas=3))
    assert world_size(cfg) == 5 == world_size_from_layout(cfg)
    assert world_size(Config(train=TrainConfig(max_steps=1))) == 1


def world_size_from_layout(cfg) -> int:
    t = cfg.topology
    return len(rank_layout(t.shards, t.replicas, t.partitions))
