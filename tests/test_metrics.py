"""Metrics: vLLM definitions on hand-built Results, per-token rows, empirical acceptance."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sim_scenarios import ideal

from spdsim.engine.metrics import (
    empirical_acceptance,
    per_position_acceptance,
    per_token_rows,
    stage_busy_fractions,
    summarize,
)
from spdsim.engine.result import BUSY, Interval, Result, TokenCommit, Verification
from spdsim.engine.run import simulate
from spdsim.scenario.config import Workload


def _chain_result():
    scenario = ideal("eagle3", 0.8, 3, new_tokens=6, requests=1)
    tokens = tuple(
        TokenCommit(0, i, t, it, d)
        for i, (t, it, d) in enumerate(
            [
                (1_000, 0, True),
                (1_000, 0, True),
                (1_000, 0, False),
                (2_000, 1, False),
                (3_000, 2, True),
                (3_000, 2, False),
            ]
        )
    )
    verifications = (
        Verification(0, 0, 1_000, 3, 2, "chain"),
        Verification(0, 1, 2_000, 3, 0, "chain"),
        Verification(0, 2, 3_000, 3, 1, "chain"),
    )
    return Result(scenario, tokens, (), verifications, 3, 1, 3_000, (0,))


def test_chain_summary_follows_vllm_definitions():
    summary = summarize(_chain_result())
    assert summary["tokens"] == 6
    assert summary["acceptance_rate"] == pytest.approx(3 / 9)
    assert summary["mean_acceptance_length"] == pytest.approx(1 + 3 / 3)
    assert summary["tokens_per_s"] == pytest.approx(6 / 3e-6)
    assert summary["tpot_ms"] == pytest.approx(0.003 / 6)
    assert summary["rho"] is None and summary["bubble_fraction"] == 0.0 and summary["speedup"] is None
    assert per_position_acceptance(_chain_result()) == pytest.approx([2 / 3, 1 / 3, 0.0])


def test_speedup_against_a_baseline_excludes_prefill():
    scenario = ideal("ar", new_tokens=10, requests=2)
    prefilled = replace(scenario, workload=Workload(64, 10, 2, prefill_ns=10**6))
    base = simulate(scenario)
    slow_start = simulate(prefilled)
    assert summarize(slow_start, base)["speedup"] == pytest.approx(1.0)
    assert summarize(slow_start)["end_ms"] == pytest.approx(summarize(base)["end_ms"] + 2.0)


def test_pipeline_summary_reports_rho_and_bubbles():
    result = simulate(ideal("spd", 1.0, 4, new_tokens=20, requests=1))
    summary = summarize(result)
    assert summary["iterations"] == 23 and summary["rho"] == pytest.approx(20 / 23)
    assert summary["n_rho"] == pytest.approx(4 * 20 / 23)
    assert summary["mean_acceptance_length"] == 1.0 and summary["acceptance_rate"] == 1.0
    # fill: cycles with 1, 2, 3 of 4 stages busy; then 20 full cycles; the drafter (1 layer) is idle 7/8
    assert summary["bubble_fraction"] == pytest.approx(1 - (6 + 80) / (4 * 23))
    assert stage_busy_fractions(result)["drafter"] == pytest.approx(23 / 8 / 23)
    unrecorded = simulate(ideal("spd", 1.0, 4, new_tokens=20, requests=1), record_intervals=False)
    assert not unrecorded.intervals
    assert summarize(unrecorded)["bubble_fraction"] == pytest.approx(summary["bubble_fraction"], rel=1e-12)


def test_per_token_rows_in_microseconds():
    rows = per_token_rows(_chain_result())
    assert rows[0] == {
        "request": 0,
        "index": 0,
        "time_us": 1.0,
        "itl_us": 1.0,
        "iteration": 0,
        "from_draft": 1,
    }
    assert [row["itl_us"] for row in rows] == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]


def test_empirical_acceptance_of_chains_and_pipelines():
    spec = empirical_acceptance(_chain_result())
    assert spec.kind == "positional" and spec.rates == pytest.approx((2 / 3, 1 / 3, 0.0))
    pipeline = simulate(ideal("spd", 0.5, 4, new_tokens=400, requests=1), record_intervals=False)
    spec = empirical_acceptance(pipeline)
    accepted = sum(v.accepted for v in pipeline.verifications)
    assert spec.kind == "spd-state" and spec.alpha == pytest.approx(accepted / 400)


def test_busy_fractions_sum_resource_intervals():
    scenario = ideal("ar", new_tokens=1, requests=1)
    intervals = (
        Interval("gpu0", 0, 500, BUSY, "forward", 0, 0),
        Interval("gpu0", 600, 1_000, BUSY, "x", 0, 0),
    )
    result = Result(scenario, (TokenCommit(0, 0, 1_000, 0, False),), intervals, (), 1, 1, 1_000, (0,))
    assert stage_busy_fractions(result) == {"gpu0": 0.9}
