"""The model-parallel performance model (dbnet.mp.cost): pure, no MPI."""

from __future__ import annotations

import math

import pytest

from dbnet.model import Dense, Local, NetSpec, Pool
from dbnet.mp.cost import Link, Node, best, calibrate, layer_flops, softmax_time, speedup_curve, step_time, traffic

NODE = Node(dense_gflops=50.0, local_gflops=10.0)
NET = Link(latency_s=3e-6, gbit_s=10.0)
SPEECH = NetSpec.mlp(440, [2560] * 4, 50, "sigmoid")
# 24 output rows in the first LC layer, 12 after pooling and in the last: divisible by 1, 2, 3, 4, 6, 12
LC = NetSpec.build((27, 27, 2), ["local 4 8", "maxpool 2", "local 1 4"], [], 6, "relu")


def test_p1_has_no_communication():
    for spec in (SPEECH, LC):
        t = step_time(spec, 1, 32, NODE, NET)
        assert t["comm"] == 0 and t["bytes"] == 0 and t["messages"] == 0
        assert t["total"] == pytest.approx(t["compute"])


def test_p1_compute_is_flops_over_rate():
    B = 16
    fwd = sum(layer.flops() for layer in SPEECH.layers)
    flops = 3 * fwd * B - SPEECH.layers[0].flops() * B  # layer 0 computes no input gradient
    assert sum(layer_flops(SPEECH, 1, 0, B)) == pytest.approx(flops)
    assert step_time(SPEECH, 1, B, NODE, NET)["compute"] == pytest.approx(flops / 50e9)


def test_lc_compute_scales_as_one_over_p():
    assert LC.layers[0].out_shape[0] == 24 and isinstance(LC.layers[1], Pool)
    t1 = step_time(LC, 1, 8, NODE, NET)["compute"]
    for P in (2, 3, 4, 6, 12):
        tp = step_time(LC, P, 8, NODE, NET)
        image = sum(f for f, layer in zip(layer_flops(LC, P, 0, 8), LC.layers) if not isinstance(layer, Dense))
        assert tp["compute"] == pytest.approx(t1 / P, rel=0.02), P  # the tiny dense head splits by units, 6 classes
        assert image / (10e9) <= tp["compute"]


def test_uneven_split_paced_by_the_slowest_partition():
    # 24 rows on 5 partitions: 5,5,5,5,4 -> the 5-row partitions set the pace
    spec = NetSpec((Local((27, 27, 1), 4, 4, 1, "relu"), Dense(24 * 24 * 4, 3, "linear")), (27, 27, 1))
    fast = Node(1e6, 10.0)
    t = step_time(spec, 5, 4, fast, NET, overlap=False)
    t1 = step_time(spec, 1, 4, fast, NET)
    assert t["compute"] == pytest.approx(t1["compute"] * 5 / 24, rel=1e-3)


def test_dense_comm_grows_with_p():
    comm = [step_time(SPEECH, P, 64, NODE, NET)["comm"] for P in (2, 4, 8, 16, 32)]
    assert all(b > a for a, b in zip(comm, comm[1:]))
    msgs = [step_time(SPEECH, P, 64, NODE, NET)["messages"] for P in (2, 4, 8)]
    # 4 dense boundaries, P - 1 peers, a message each way forward and backward
    assert msgs == [4 * 2 * (P - 1) for P in (2, 4, 8)]


def test_bytes_match_a_hand_count():
    # 6 - 4 - 2 - 3 MLP on 2 partitions, batch 5: before layer 1, partition 0 owns units 0-1 of layer 0's 4 and
    # needs all 4: it sends 2 floats/example and receives 2; before layer 2 (2 units, 1 each): 1 and 1.
    spec = NetSpec.mlp(6, [4, 2], 3, "relu")
    B = 5
    tr = traffic(spec, 2, 0, B)
    assert [(t["sent"], t["received"], t["sends"], t["recvs"]) for t in tr] == [
        (0, 0, 0, 0), (2 * 4 * B, 2 * 4 * B, 1, 1), (1 * 4 * B, 1 * 4 * B, 1, 1)]
    t = step_time(spec, 2, B, NODE, NET)
    per = t["per_partition"][0]
    # forward + backward, sent + received
    assert per["bytes"] == 2 * (2 * 4 * B * 2 + 1 * 4 * B * 2)
    assert per["messages"] == 4
    one_way = [NET.time(1, 2 * 4 * B), NET.time(1, 1 * 4 * B)]
    assert per["comm_raw"] == pytest.approx(2 * sum(one_way))
    assert per["comm"] == pytest.approx(2 * sum(one_way) + softmax_time(2, B, NET))


def test_halo_bytes_hand_count():
    # 10x10x1 input, local k3 -> 8x8x2, then local k3 -> 6x6x1: 2 partitions own 4 rows of layer 0 each.
    # Layer 1's bands: rows 0-2 read input rows 0-4, rows 3-5 read 3-7: each needs one row from the other.
    spec = NetSpec((Local((10, 10, 1), 3, 2, 1, "relu"), Local((8, 8, 2), 3, 1, 1, "relu"), Dense(36, 2, "linear")),
                   (10, 10, 1))
    tr = traffic(spec, 2, 0, 1)
    assert tr[1]["received"] == 8 * 2 * 4 and tr[1]["sent"] == 8 * 2 * 4  # one row of 8 x 2 maps
    # overlap hides the forward halo behind interior rows; without it more is charged
    with_ov = step_time(spec, 2, 64, Node(1.0, 0.01), NET)["comm"]
    without = step_time(spec, 2, 64, Node(1.0, 0.01), NET, overlap=False)["comm"]
    assert with_ov < without


def test_softmax_latency_log2p():
    assert softmax_time(1, 64, NET) == 0
    fast = Link(1e-6, 1e9)
    assert softmax_time(8, 1, fast) == pytest.approx(3 * 3 * 1e-6, rel=1e-3)
    assert softmax_time(9, 1, fast) == pytest.approx(3 * 4 * 1e-6, rel=1e-3)


def test_curves_lc_scales_further_than_dense():
    Ps = list(range(1, 82))
    node = Node(500.0, 100.0)  # a 16-core machine: compute cheap against a 10 Gbit/s link
    spec = NetSpec.build((100, 100, 3), ["local 10 8", "maxpool 3 stride 2", "local 5 16"], [], 10, "relu")
    lc, dense = speedup_curve(spec, Ps, 32, node, NET), speedup_curve(SPEECH, Ps, 64, node, NET)
    assert lc[0]["speedup"] == pytest.approx(1.0)
    assert best(lc)["parts"] > best(dense)["parts"]
    assert best(lc)["speedup"] > best(dense)["speedup"]
    faster = speedup_curve(SPEECH, Ps, 64, node, Link(3e-6, 100.0))
    assert best(faster)["speedup"] >= best(dense)["speedup"]


def test_calibrate_reproduces_p1():
    n = calibrate(SPEECH, 64, 0.1, Node(1.0, 1.0))
    assert step_time(SPEECH, 1, 64, n, NET)["total"] == pytest.approx(0.1)
    n2 = calibrate(LC, 8, 0.05, n)
    assert n2.dense_gflops == n.dense_gflops
    assert step_time(LC, 1, 8, n2, NET)["total"] == pytest.approx(0.05)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="dense_gflops"):
        Node(0, 1)
    with pytest.raises(ValueError, match="gbit_s"):
        Link(1e-6, 0)
    with pytest.raises(ValueError):
        step_time(SPEECH, 0, 8, NODE, NET)
    assert math.isfinite(step_time(SPEECH, 81, 8, NODE, NET)["total"])
