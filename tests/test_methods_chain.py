"""Serial chains: K draft passes, verify of K+1, bonus token, truncation at the request's end."""

from dataclasses import replace

import pytest
from sim_scenarios import TOY_SHAPE, ideal

from spdsim.engine.run import simulate
from spdsim.methods.chain import chain_draft_pass_ns
from spdsim.scenario.config import AcceptanceSpec, LatencySpec


def test_full_acceptance_commits_k_plus_one_per_iteration():
    result = simulate(ideal("eagle3", 1.0, 3, new_tokens=10, requests=1))
    assert [t.commit_ns for t in result.tokens] == [38_000] * 4 + [76_000] * 4 + [114_000] * 2
    assert [t.from_draft for t in result.tokens[:4]] == [True, True, True, False]
    assert [(v.drafted, v.accepted) for v in result.verifications] == [(3, 3)] * 3
    drafts = [i for i in result.intervals if i.label == "draft" and i.iteration == 0]
    assert [(i.start_ns, i.end_ns) for i in drafts] == [(0, 2_000), (2_000, 4_000), (4_000, 6_000)]


def test_zero_acceptance_commits_the_target_token_only():
    result = simulate(ideal("mtp", 0.0, 4, new_tokens=5, requests=1))
    assert [t.commit_ns for t in result.tokens] == [40_000 * i for i in range(1, 6)]
    assert not any(t.from_draft for t in result.tokens)


def test_verify_cost_grows_with_query_tokens():
    scenario = ideal("eagle3", 0.0, 7, new_tokens=1, requests=1)
    scenario = replace(scenario, latency=replace(scenario.latency, per_query_token_ns=100))
    assert simulate(scenario).end_ns == 7 * 2_000 + 32_000 + 7 * 100


def test_draft_model_is_a_smaller_lm_of_the_target_shape():
    scenario = replace(
        ideal("draft-model", 0.5, 3, draft_model_layers_fraction=0.25),
        latency=LatencySpec(kind="constant", layer_ns=1_000, head_ns=200, embed_ns=10),
    )
    assert chain_draft_pass_ns(scenario, _latency(scenario))[0] == 10 + 8_000 + 200
    mtp = replace(scenario, method=replace(scenario.method, name="mtp", draft_layers=3))
    assert chain_draft_pass_ns(mtp, _latency(mtp))[0] == 0  # constant model: draft_step_ns
    assert TOY_SHAPE.num_layers == 32


def _latency(scenario):
    from spdsim.latency.build import build_latency_model

    return build_latency_model(scenario)


@pytest.mark.parametrize("name", ["draft-model", "eagle3", "mtp"])
def test_positional_acceptance_reaches_the_vllm_acceptance_length(name):
    rates = (0.8936, 0.7234, 0.6170)
    scenario = replace(
        ideal(name, width=3, new_tokens=5_000, requests=2),
        acceptance=AcceptanceSpec(kind="positional", rates=rates),
    )
    result = simulate(scenario, record_intervals=False)
    accepted = sum(v.accepted for v in result.verifications)
    assert 1 + accepted / len(result.verifications) == pytest.approx(1 + sum(rates), rel=0.02)


@pytest.mark.parametrize("name", ["draft-model", "eagle3", "mtp", "dflash", "peagle"])
def test_batched_pass_of_a_constant_model_is_the_single_request_pass_at_the_longest_context(name):
    from types import SimpleNamespace

    from spdsim.methods.batched import ChainDecoder
    from spdsim.methods.common import kv_lengths
    from spdsim.methods.parallel import parallel_pass_ns

    scenario = ideal(
        name,
        0.5,
        4,
        draft_step_ns=0 if name == "draft-model" else 2_000,
        draft_model_layers_fraction=0.25,
        draft_layers=2,
    )
    scenario = replace(
        scenario, latency=replace(scenario.latency, embed_ns=10, head_ns=200, per_query_token_ns=320)
    )
    latency = _latency(scenario)
    single = parallel_pass_ns if name in ("dflash", "peagle") else chain_draft_pass_ns
    committed = 7
    kv = int(kv_lengths(scenario)[committed])
    decoder = ChainDecoder(SimpleNamespace(scenario=scenario, latency=latency))
    assert decoder.draft_pass_ns(3, 3 * kv - 5, kv) == single(scenario, latency)[committed]
    if name == "draft-model":  # 8 of the 32 layers: embed + 8 x layer_ns + head
        assert decoder.draft_pass_ns(1, kv, kv) == 10 + 8_000 + 200
