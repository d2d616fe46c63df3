"""Topology, host regime and scale costs (issue 14): reductions to today's model, closed forms, simulation."""

from __future__ import annotations

import dataclasses

import pytest

from spdsim.engine.closed_form import predict
from spdsim.engine.metrics import empirical_acceptance, summarize
from spdsim.engine.run import simulate
from spdsim.latency.build import build_latency_model
from spdsim.latency.host import HostBoundLatency, fit_host_costs, with_host_overhead
from spdsim.methods.pipeline import pipeline_costs
from spdsim.scenario.config import Hardware, LatencySpec, MethodSpec, Overheads, Scenario, Workload, to_dict
from spdsim.scenario.files import build_scenario
from spdsim.scenario.presets import get_hardware, get_model
from spdsim.scenario.topology import (
    CONTROL_BYTES,
    Topology,
    anchor_stages,
    build_topology,
    comm_costs,
    place_ranks,
)

SHAPE = get_model("qwen3.5-4b")


def spd(hardware: Hardware, n: int = 8, **method) -> Scenario:
    return Scenario(
        method=MethodSpec(name="spd", num_stages=n, spec_layers=3, **method),
        model=SHAPE,
        hardware=hardware,
        latency=LatencySpec(kind="roofline"),
        acceptance=dataclasses.replace(Scenario().acceptance, alpha=0.8),
        overheads=Overheads(control_ns=10_000, gather_ns=10_000, fixed_cycle_ns=20_000),
        workload=Workload(prompt_tokens=128, new_tokens=256, num_requests=2),
    )


def test_zero_network_and_host_costs_reduce_exactly_to_todays_model():
    today = get_hardware("h100")
    # a topology on one node with free links and no host costs: the same cycles as without a topology, once the
    # flat overheads that the topology replaces are moved into it
    free = dataclasses.replace(today, gpus_per_node=8, p2p_latency_ns=0, p2p_bandwidth_gbps=0.0)
    bare = dataclasses.replace(today, p2p_latency_ns=0, p2p_bandwidth_gbps=0.0)
    for n in (2, 4, 8, 16):
        a = pipeline_costs(spd(free, n), build_latency_model(spd(free, n)))
        b = pipeline_costs(spd(bare, n), build_latency_model(spd(bare, n)))
        assert a.cycle_ns == b.cycle_ns and a.refill_total_ns == b.refill_total_ns and a.reject_ns == 0
    latency = build_latency_model(spd(today))
    assert not isinstance(latency, HostBoundLatency)  # zero host costs: the device model itself
    assert with_host_overhead(latency) is latency
    assert "gpus_per_node" not in to_dict(spd(today))["hardware"]  # config.json unchanged


def test_the_default_scenario_is_priced_as_before():
    raw = {"model": "qwen3.5-4b", "hardware": "h100", "method": {"name": "spd"}}
    scenario = build_scenario(raw)
    assert "rank_nodes" not in to_dict(scenario)["method"]
    costs = pipeline_costs(scenario, build_latency_model(scenario))
    assert costs.reject_ns == 0 and len(set(costs.send_ns)) == 1


def test_packed_placement_and_anchor_senders():
    assert place_ranks(9, 8) == (0,) * 8 + (1,)
    assert place_ranks(17, 8) == (0,) * 8 + (1,) * 8 + (2,)
    assert place_ranks(5, 0) == (0,) * 5
    assert anchor_stages((8, 8, 8, 8)) == (0, 1, 2, 3)
    assert anchor_stages((4,) * 8) == (1, 3, 5, 7)
    assert anchor_stages((2,) * 16) == (3, 7, 11, 15)  # the gather does not grow past the 4 anchors


def message(latency_ns, bandwidth_gbps, host_ns, num_bytes):
    return host_ns + latency_ns + round(num_bytes / bandwidth_gbps)


@pytest.mark.parametrize("collective", ["fanout", "tree", "nccl"])
@pytest.mark.parametrize("n", [4, 8, 16])
def test_collectives_have_closed_forms(collective, n):
    hw = dataclasses.replace(
        get_hardware("h100"),
        gpus_per_node=8,
        inter_node_latency_ns=50_000,
        inter_node_bandwidth_gbps=3.125,
        host_message_ns=7_000,
        collective=collective,
    )
    topo = build_topology(hw, n, own_drafter=True)
    hidden = SHAPE.hidden_size * 2
    comm = comm_costs(topo, 10_000 + round(hidden / 450.0), hidden, (32 // n,) * n, spd=True)
    intra = message(10_000, 450.0, 7_000, CONTROL_BYTES)
    inter = message(50_000, 3.125, 7_000, CONTROL_BYTES)
    remote = sum(1 for r in topo.stage_ranks if topo.rank_nodes[r] != 0)
    costs = [inter] * remote + [intra] * (n - remote)
    rounds = (n + 1).bit_length() - 1 if (n + 1) & n == 0 else (n + 1).bit_length()
    expected = {
        "fanout": sum(costs),
        "tree": rounds * max(costs),
        "nccl": 7_000 + rounds * (max(costs) - 7_000),
    }[collective]
    assert comm.control_ns == expected == comm.discard_ns
    # packed 8 per node: each node boundary and the last stage -> controller hop cross
    assert sum(comm.inter_node_hops) == {4: 0, 8: 2, 16: 3}[n]


def test_cycle_closed_form_with_topology_and_host():
    hw = get_hardware("h100-hf-eager-2node")
    scenario = spd(hw, 8)
    latency = build_latency_model(scenario)
    costs = pipeline_costs(scenario, latency)
    topo = build_topology(hw, 8, True)
    comm = comm_costs(topo, latency.p2p_ns(latency.hidden_bytes(1)), latency.hidden_bytes(1), (4,) * 8, True)
    kv = 128
    stage = [int(latency.layers_ns(4, 1, kv)) + (latency.embed_ns(1) if s == 0 else 0) for s in range(8)]
    assert (
        stage[1]
        == max(int(build_latency_model(spd(get_hardware("h100"))).layers_ns(4, 1, kv)), 4 * 925_000) + 500_000
    )
    pdm = int(latency.pdm_ns(3, 9, kv))
    members = [stage[s] + comm.send_ns[s] for s in range(8)] + [pdm + 10_000 + comm.gather_ns]
    expected = 10_000 + comm.control_ns + max(members) + latency.head_ns(1) + 20_000
    assert costs.cycle_ns[8][0] == expected
    assert costs.reject_ns == comm.discard_ns + hw.crop_ns


@pytest.mark.parametrize("hardware", ["h100-hf-eager-2node", "h100-2node-100g", "h200-nvl8", "h100-pcie"])
@pytest.mark.parametrize("n", [4, 16])
def test_event_simulation_matches_the_closed_form_within_1_percent(hardware, n):
    scenario = spd(get_hardware(hardware), n)
    result = simulate(scenario, record_intervals=False)
    tokens_per_s = summarize(result)["tokens_per_s"]
    realized = empirical_acceptance(result)  # separates timing from acceptance sampling noise
    assert tokens_per_s == pytest.approx(predict(scenario, realized=realized).tokens_per_s, rel=0.01)
    traced = simulate(scenario, record_intervals=True)  # the SimPy path with every interval and the discard
    assert traced.end_ns == result.end_ns


def test_reject_cost_is_paid_once_per_rejection():
    hw = dataclasses.replace(get_hardware("h100"), crop_ns=123_456)
    with_crop = simulate(spd(hw, 4), record_intervals=False)
    without = simulate(spd(get_hardware("h100"), 4), record_intervals=False)
    refills = sum(1 for v in with_crop.verifications if v.accepted == 0)
    last = [v for v in with_crop.verifications if v.accepted == 0 and v.time_ns == with_crop.end_ns]
    # a rejection at a request's last token brings no refill
    ends = {r: max(t.commit_ns for t in with_crop.tokens if t.request == r) for r in range(2)}
    final_rejects = sum(
        1 for v in with_crop.verifications if v.accepted == 0 and v.time_ns == ends[v.request]
    )
    assert with_crop.end_ns - without.end_ns == 123_456 * (refills - final_rejects)
    assert len(last) <= 1


def test_host_regime_is_max_of_device_and_host_plus_call():
    scenario = spd(get_hardware("h100-hf-eager"), 8)
    latency = build_latency_model(scenario)
    device = build_latency_model(spd(get_hardware("h100"), 8))
    assert latency.layers_ns(8, 1, 200) == max(device.layers_ns(8, 1, 200), 8 * 925_000) + 500_000
    assert latency.head_ns(1) == device.head_ns(1)  # verify is graph-captured


def test_fit_host_costs_recovers_the_parameters():
    points = [
        (layers, max(90_000 * layers, layers * 925_000) + 500_000, 90_000 * layers) for layers in (2, 4, 8)
    ]
    h, c = fit_host_costs(points)
    assert h == pytest.approx(925_000, rel=1e-6) and c == pytest.approx(500_000, rel=1e-6)
    # the published phase times of docs/spd.md 5.4 (stage forwards of 8 and 4 layers)
    h, c = fit_host_costs([(8, 7.90e6, 0.8e6), (4, 4.20e6, 0.4e6)])
    assert h == pytest.approx(925_000, rel=1e-3) and c == pytest.approx(500_000, rel=1e-3)


def test_drafter_true_cost_includes_aggregation_and_full_attention_spec_layers():
    base = spd(get_hardware("h100"), 8)
    plain = build_latency_model(base)
    aggregated = build_latency_model(
        dataclasses.replace(base, method=dataclasses.replace(base.method, aggregation_types=5))
    )
    extra = aggregated.pdm_ns(3, 9, 200) - plain.pdm_ns(3, 9, 200)
    hw = base.hardware
    bytes_per_ns = hw.mem_bandwidth_gbps * hw.bandwidth_efficiency
    assert extra == pytest.approx(15 * SHAPE.hidden_size**2 * 2 / bytes_per_ns, rel=0.01)  # 98.3M params
    assert 15 * 2560**2 == 98_304_000


def test_topology_placement_validation():
    from spdsim.errors import SpdsimError

    with pytest.raises(SpdsimError, match="rank_nodes"):
        pipeline_costs(
            spd(get_hardware("h100"), 4, rank_nodes=(0, 1)), build_latency_model(spd(get_hardware("h100"), 4))
        )
    with pytest.raises(SpdsimError, match="collective"):
        build_scenario(
            {
                "model": "qwen3.5-4b",
                "hardware": {**to_dict(spd(get_hardware("h100")))["hardware"], "collective": "ring"},
            }
        )


def test_topology_dataclass_message_to_self_is_free():
    topo = Topology((0, 0, 1), (1, 2), 10, 1.0, 100, 1.0, 5, "fanout")
    assert topo.message_ns_between(1, 1, 100) == 0
    assert topo.message_ns_between(0, 1, 100) == 5 + 10 + 100
    assert topo.message_ns_between(0, 2, 100) == 5 + 100 + 100
