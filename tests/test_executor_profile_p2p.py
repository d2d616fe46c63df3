"""Point-to-point ping-pong between two gloo ranks: one entry per message with its size, one-way spread and the
bandwidth its median implies; large messages use their own iteration count."""

from executor.profile_p2p import LARGE_BYTES, Message, P2PSpec, bandwidth_messages, profile_p2p


def test_message_sizes_follow_their_dtype():
    assert Message("control", 9, "int64").nbytes == 72
    assert Message("hidden", 4096).nbytes == 8192
    assert [m.nbytes for m in bandwidth_messages((1, 4))] == [1 << 20, 4 << 20]


def test_ping_pong_reports_one_way_times_per_message():
    messages = (Message("control", 9, "int64"), Message("hidden", 64), *bandwidth_messages((1,)))
    entries = profile_p2p(P2PSpec(messages, warmup=2, iters=7, large_iters=3, timeout_s=30), backend="gloo")
    assert [e["label"] for e in entries] == ["control", "hidden", "1 MiB"]
    assert [e["bytes"] for e in entries] == [72, 128, LARGE_BYTES]
    assert [e["samples"] for e in entries] == [7, 7, 3]
    for entry in entries:
        assert 0 < entry["p10_us"] <= entry["median_us"] <= entry["p90_us"]
        assert entry["gbps"] == entry["bytes"] / entry["median_us"] / 1e3
