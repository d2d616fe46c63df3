"""Closed forms: textbook limits, Leviathan's optimal-γ table, SpecDec++ stop lengths, method predictions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_scenarios import ideal

from spdsim.engine.closed_form import (
    chain_acceptance_length,
    chain_speedup,
    expected_max_ns,
    optimal_gamma,
    predict,
    spd_rho,
    spd_speedup,
    stop_length_distribution,
)
from spdsim.engine.metrics import empirical_acceptance, summarize
from spdsim.engine.run import simulate
from spdsim.methods.adaptive import stop_length
from spdsim.scenario.acceptance import logit
from spdsim.scenario.config import AcceptanceSpec, Overheads

# docs/baselines.md §1 (F2): optimal γ, τ and S per (α, c)
F2_TABLE = {
    (0.6, 0.01): (7, 2.46, 2.30),
    (0.6, 0.05): (4, 2.31, 1.92),
    (0.6, 0.10): (3, 2.18, 1.67),
    (0.6, 0.20): (2, 1.96, 1.40),
    (0.7, 0.01): (9, 3.24, 2.97),
    (0.7, 0.05): (6, 3.06, 2.35),
    (0.7, 0.10): (4, 2.77, 1.98),
    (0.7, 0.20): (3, 2.53, 1.58),
    (0.8, 0.01): (14, 4.82, 4.23),
    (0.8, 0.05): (8, 4.33, 3.09),
    (0.8, 0.10): (6, 3.95, 2.47),
    (0.8, 0.20): (4, 3.36, 1.87),
    (0.9, 0.01): (24, 9.28, 7.49),
    (0.9, 0.05): (13, 7.71, 4.67),
    (0.9, 0.10): (10, 6.86, 3.43),
    (0.9, 0.20): (7, 5.70, 2.37),
}


@pytest.mark.parametrize(("alpha", "cost_ratio"), list(F2_TABLE))
def test_chain_closed_form_reproduces_the_optimal_gamma_table(alpha, cost_ratio):
    gamma, tau, speedup = optimal_gamma(alpha, cost_ratio)
    expected_gamma, expected_tau, expected_speedup = F2_TABLE[alpha, cost_ratio]
    assert (gamma, round(tau, 2), round(speedup, 2)) == (expected_gamma, expected_tau, expected_speedup)
    # the method-level prediction of an EAGLE-style chain at γ* agrees: T_d = c·T_t(1), T_t(γ+1) = T_t(1)
    target_ns = 32 * 1_000
    scenario = ideal("eagle3", alpha, gamma, draft_step_ns=round(cost_ratio * target_ns))
    assert predict(scenario).speedup == pytest.approx(speedup, rel=1e-9)
    assert predict(scenario).acceptance_length == pytest.approx(tau, rel=1e-9)


@pytest.mark.parametrize("stages", [1, 2, 4, 8, 16])
def test_spd_limits(stages):
    assert spd_speedup(1.0, stages) == stages
    assert spd_speedup(0.0, stages) == pytest.approx(1.0)
    assert spd_rho(0.5, stages) == pytest.approx(1 / (1 + (stages - 1) * 0.5))
    # the method's closed form: α = 0 -> exactly AR speed; α = 1 -> n up to the n-1 fill cycles
    never = predict(ideal("spd", 0.0, stages, new_tokens=20_000, requests=1))
    always = predict(ideal("spd", 1.0, stages, new_tokens=20_000, requests=1))
    assert never.speedup == pytest.approx(1.0, rel=1e-12)
    assert never.rho == pytest.approx(1 / stages, rel=1e-12)
    assert always.speedup == pytest.approx(stages * 20_000 / (20_000 + stages - 1), rel=1e-12)
    assert always.n_rho == pytest.approx(always.speedup, rel=1e-12)


@pytest.mark.parametrize("alpha", [0.5, 0.7, 0.9])
def test_spd_prediction_tends_to_the_textbook_form(alpha):
    prediction = predict(ideal("spd", alpha, 8, new_tokens=200_000, requests=1))
    assert prediction.rho == pytest.approx(spd_rho(alpha, 8), rel=1e-3)
    assert prediction.speedup == pytest.approx(spd_speedup(alpha, 8), rel=1e-3)


def test_spd_state_acceptance_uses_the_stationary_reject_rate():
    saturated, refill = 0.9, 0.6
    spec = AcceptanceSpec(kind="spd-state", alpha_saturated=saturated, alpha_refill=refill)
    scenario = replace(ideal("spd", width=4, new_tokens=200_000, requests=1), acceptance=spec)
    reject_rate = (1 - saturated) / (refill + 1 - saturated)  # stationary P(verification follows a refill)
    assert predict(scenario).rho == pytest.approx(1 / (1 + 3 * reject_rate), rel=1e-3)


def test_chain_acceptance_length():
    assert chain_acceptance_length(0.8, 3) == pytest.approx(1 + 0.8 + 0.64 + 0.512)
    assert chain_acceptance_length(1.0, 5) == 6
    assert chain_speedup(0.0, 4, 0.1) == pytest.approx(1 / 1.4)


def test_positional_rates_enter_the_chain_prediction():
    rates = (0.8936, 0.7234, 0.6170)  # vLLM MTP example, τ = 3.23 (docs/baselines.md F1)
    scenario = replace(ideal("mtp", width=3), acceptance=AcceptanceSpec(kind="positional", rates=rates))
    assert predict(scenario).acceptance_length == pytest.approx(3.234, abs=1e-3)


def test_parallel_drafting_pays_one_pass():
    chain = predict(ideal("eagle3", 0.8, 8))
    parallel = predict(ideal("dflash", 0.8, 8))
    assert chain.iteration_ns == 8 * 2_000 + 32_000
    assert parallel.iteration_ns == 2_000 + 32_000
    assert parallel.acceptance_length == chain.acceptance_length


@settings(max_examples=12, deadline=None)
@given(
    alpha=st.floats(0.3, 0.98),
    sigma=st.sampled_from([0.0, 0.3, 1.0]),
    h=st.floats(0.1, 0.8),
    k_min=st.integers(1, 3),
    k_max=st.integers(3, 12),
)
def test_stop_length_distribution_matches_sampling(alpha, sigma, h, k_min, k_max):
    conditional = [alpha * (0.97**k) for k in range(k_max)]
    exact = stop_length_distribution(conditional, sigma, h, k_min, k_max)
    rng = np.random.default_rng(0)
    logits = [logit(a) for a in conditional]
    samples = [
        stop_length(logits, row, sigma, h, k_min, k_max) for row in rng.standard_normal((20_000, k_max))
    ]
    empirical = np.bincount(samples, minlength=k_max + 1) / len(samples)
    assert exact.sum() == pytest.approx(1.0)
    assert np.abs(exact - empirical).max() < 0.02


def test_specdecpp_without_noise_stops_where_the_product_crosses_h():
    # a = 0.8: 1 - 0.8 = 0.2 <= 0.3 after draft 2, 1 - 0.64 = 0.36 > 0.3 after draft 3
    distribution = stop_length_distribution([0.8] * 10, 0.0, 0.3, 1, 10)
    assert int(np.argmax(distribution)) == 3 and distribution[3] == 1.0
    scenario = replace(ideal("specdecpp", 0.8, 10), acceptance=AcceptanceSpec(alpha=0.8, head_noise=0.0))
    assert predict(scenario).acceptance_length == pytest.approx(chain_acceptance_length(0.8, 3))


def test_cascade_inner_loop_cost():
    """Inner SD with α_inner = 1 and k_max = K makes K tokens in one little-chain + one draft verify."""
    scenario = ideal("cascade", 1.0, 4, draft_step_ns=2_000)
    scenario = replace(scenario, acceptance=AcceptanceSpec(alpha=1.0, inner_alpha=1.0, head_noise=0.0))
    prediction = predict(scenario)
    # outer stops at k_max = 4 (1 - Π p̂ = 0 never exceeds h); inner makes 4 + 1 tokens in one iteration
    assert prediction.acceptance_length == pytest.approx(5.0)
    assert prediction.iteration_ns == pytest.approx(4 * 500 + 2_000 + 32_000)


def test_expected_max_of_jittered_members_matches_sampling():
    members = [(1_000, 200), (1_100,), (600, 600)]
    cv = 0.3
    sigma = np.sqrt(np.log1p(cv * cv))
    rng = np.random.default_rng(5)
    draws = [
        sum(part * rng.lognormal(-0.5 * sigma**2, sigma, 200_000) for part in parts) for parts in members
    ]
    sampled = float(np.max(np.vstack(draws), axis=0).mean())
    assert expected_max_ns(members, cv) == pytest.approx(sampled, rel=0.01)
    assert expected_max_ns(members, 0.0) == 1_200


@pytest.mark.parametrize("cv", [0.1, 0.4])
def test_pipeline_prediction_accounts_for_jitter(cv):
    """With jitter the cycle waits for its slowest member; the closed form integrates that expectation."""
    scenario = ideal("spd", 0.8, 8, new_tokens=5_000, requests=2, drafter_placement="stage0")
    scenario = replace(scenario, overheads=Overheads(jitter_cv=cv, control_ns=500, p2p_ns=300, gather_ns=200))
    result = simulate(scenario, record_intervals=False)
    simulated = summarize(result)["tokens_per_s"]
    assert simulated == pytest.approx(
        predict(scenario, realized=empirical_acceptance(result)).tokens_per_s, rel=0.01
    )
    without = predict(replace(scenario, overheads=replace(scenario.overheads, jitter_cv=0.0)))
    assert predict(scenario).tokens_per_s < without.tokens_per_s
