"""SpecDec++ and the little -> draft -> target cascade."""

from dataclasses import replace

import numpy as np
import pytest
from sim_scenarios import ideal

from spdsim.engine.closed_form import predict
from spdsim.engine.metrics import summarize
from spdsim.engine.run import simulate
from spdsim.methods.adaptive import stop_length
from spdsim.scenario.acceptance import logit
from spdsim.scenario.config import AcceptanceSpec


def test_stop_rule_skips_the_first_draft_and_respects_bounds():
    certain = [logit(0.999)] * 10
    assert stop_length(certain, [0.0] * 10, 0.0, 0.3, 2, 10) == 10  # never predicts a rejection: k_max
    doubtful = [logit(0.1)] * 10
    assert stop_length(doubtful, [0.0] * 10, 0.0, 0.3, 2, 10) == 2  # p̂_1 = 1, so not before draft 2
    assert stop_length(doubtful, [0.0] * 10, 0.0, 0.3, 4, 10) == 4  # k_min
    assert stop_length(doubtful, [0.0] * 10, 0.0, 0.95, 1, 10) == 3  # 1 - 0.1^2 > 0.95 first after draft 3


def test_specdecpp_drafts_longer_when_acceptance_is_high():
    lengths = {}
    for alpha in (0.6, 0.95):
        scenario = ideal("specdecpp", alpha, 20, new_tokens=2_000)
        result = simulate(scenario, record_intervals=False)
        lengths[alpha] = np.mean([v.drafted for v in result.verifications])
    assert lengths[0.6] < 3 < 6 < lengths[0.95]


def test_specdecpp_beats_a_badly_chosen_fixed_k():
    adaptive = predict(ideal("specdecpp", 0.8, 20, draft_step_ns=3_000))
    too_long = predict(replace(ideal("draft-model", 0.8, 16, draft_step_ns=3_000)))
    assert adaptive.tokens_per_s > too_long.tokens_per_s


def test_cascade_inner_loop_records_little_and_draft_verify_spans():
    scenario = ideal("cascade", 0.8, 6, new_tokens=50, requests=1)
    result = simulate(scenario)
    labels = {i.label for i in result.intervals}
    assert {"little", "draft-verify", "verify"} <= labels
    assert all(v.state == "chain" for v in result.verifications)
    assert summarize(result)["tokens_per_s"] == pytest.approx(predict(scenario).tokens_per_s, rel=0.15)


def test_cascade_with_perfect_little_model_matches_a_cheap_chain():
    spec = AcceptanceSpec(alpha=0.8, inner_alpha=1.0, head_noise=0.0)
    cascade = replace(ideal("cascade", width=6, new_tokens=4_000, requests=1), acceptance=spec)
    result = simulate(cascade, record_intervals=False)
    assert summarize(result)["tokens_per_s"] == pytest.approx(predict(cascade).tokens_per_s, rel=0.02)
