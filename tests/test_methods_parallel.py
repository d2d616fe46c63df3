"""Parallel drafting: one drafter pass per block whose cost grows weakly with K."""

from dataclasses import replace

from sim_scenarios import ideal, roofline

from spdsim.engine.run import simulate
from spdsim.latency.build import build_latency_model
from spdsim.methods.parallel import parallel_pass_ns


def test_one_pass_then_verify():
    result = simulate(ideal("dflash", 1.0, 8, new_tokens=18, requests=1))
    assert [t.commit_ns for t in result.tokens][::9] == [34_000, 68_000]
    assert sum(1 for i in result.intervals if i.label == "draft") == 2


def test_pass_cost_grows_weakly_with_block_size():
    costs = {}
    for name in ("dflash", "peagle"):
        for k in (4, 16):
            scenario = roofline(name, draft_tokens=k, draft_layers=4)
            costs[name, k] = parallel_pass_ns(scenario, build_latency_model(scenario))[0]
    serial = roofline("eagle3", draft_tokens=16, draft_layers=4)
    one_serial_pass = build_latency_model(serial).chain_draft_ns(4, 128)
    for name in ("dflash", "peagle"):
        assert costs[name, 4] <= costs[name, 16] < 1.2 * costs[name, 4]
        assert costs[name, 16] < 4 * one_serial_pass  # far below 16 serial passes


def test_constant_model_scales_with_query_rows():
    scenario = ideal("peagle", 0.5, 8)
    scenario = replace(scenario, latency=replace(scenario.latency, per_query_token_ns=320))
    assert parallel_pass_ns(scenario, build_latency_model(scenario))[0] == 2_000 + round(7 * 320 * 1 / 32)
