"""Acceptance models: sampling frequencies, conditional rates, SPD states and exact trace replay."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim_scenarios import ideal

from spdsim.engine.run import simulate
from spdsim.errors import SpdsimError
from spdsim.scenario.acceptance import TRACE_COLUMNS, build_acceptance_model, load_trace
from spdsim.scenario.config import AcceptanceSpec, Workload


def test_iid_chain_counts_are_truncated_geometric():
    model = build_acceptance_model(AcceptanceSpec(kind="iid", alpha=0.7))
    stream = model.stream(np.random.default_rng(1), 0, 4)
    counts = np.bincount([stream.chain_accepted(4) for _ in range(40_000)], minlength=5) / 40_000
    expected = [0.3, 0.7 * 0.3, 0.49 * 0.3, 0.343 * 0.3, 0.7**4]
    assert np.allclose(counts, expected, atol=0.01)


def test_positional_rates_give_conditional_acceptance():
    rates = (0.8936, 0.7234, 0.6170)
    model = build_acceptance_model(AcceptanceSpec(kind="positional", rates=rates))
    assert model.conditional(1) == pytest.approx(0.8936)
    assert model.conditional(2) == pytest.approx(0.7234 / 0.8936)
    assert model.conditional(5) == pytest.approx(0.6170 / 0.7234)  # beyond the given positions: last a_k
    assert model.survival(3).tolist() == pytest.approx(list(rates))
    stream = model.stream(np.random.default_rng(2), 0, 3)
    counts = np.array([stream.chain_accepted(3) for _ in range(40_000)])
    assert [float(np.mean(counts >= k)) for k in (1, 2, 3)] == pytest.approx(list(rates), abs=0.01)
    assert model.spd_alphas() == (0.8936, 0.8936)


def test_spd_state_model_switches_rate_after_refill():
    model = build_acceptance_model(AcceptanceSpec(kind="spd-state", alpha_saturated=0.9, alpha_refill=0.2))
    stream = model.stream(np.random.default_rng(3), 0)
    saturated = np.mean([stream.spd_accept(False) for _ in range(20_000)])
    refill = np.mean([stream.spd_accept(True) for _ in range(20_000)])
    assert saturated == pytest.approx(0.9, abs=0.01) and refill == pytest.approx(0.2, abs=0.01)
    assert model.conditional(3) == 0.9


def test_unknown_kinds_and_unresolved_presets_are_refused():
    with pytest.raises(SpdsimError, match="acceptance.kind"):
        build_acceptance_model(AcceptanceSpec(kind="oracle"))
    with pytest.raises(SpdsimError, match="scenario loader"):
        build_acceptance_model(AcceptanceSpec(kind="preset", preset="x"))
    with pytest.raises(SpdsimError, match="rates"):
        build_acceptance_model(AcceptanceSpec(kind="positional"))


def _rows(prompts, kind):
    """Trace rows per the team format. ``prompts``: {prompt: [outcome per verification]}."""
    rows = []
    for prompt, outcomes in prompts.items():
        position = 100
        for verify_index, outcome in enumerate(outcomes):
            if kind == "spd":
                state = "refill" if verify_index == 0 or not outcomes[verify_index - 1] else "saturated"
                rows.append(
                    (prompt, verify_index, position, "spd", 1, state, 4, 7, 7 if outcome else 8, outcome)
                )
                position += 1
                continue
            accepted, width = outcome
            for draft_index in range(1, width + 1):
                flag = int(draft_index <= accepted)
                rows.append(
                    (
                        prompt,
                        verify_index,
                        position + draft_index,
                        "eagle3",
                        draft_index,
                        "chain",
                        width,
                        7,
                        7,
                        flag,
                    )
                )
            position += accepted + 1
    return pd.DataFrame(rows, columns=list(TRACE_COLUMNS))


def _write(frame, path):
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return str(path)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    outcomes=st.lists(st.lists(st.integers(0, 1), min_size=1, max_size=40), min_size=1, max_size=3),
    stages=st.sampled_from([1, 2, 4, 8]),
    suffix=st.sampled_from([".csv", ".parquet"]),
)
def test_spd_trace_replay_reproduces_the_accept_count(tmp_path, outcomes, stages, suffix):
    length = min(len(o) for o in outcomes)
    prompts = {f"prompt-{i}": o[:length] for i, o in enumerate(outcomes)}
    path = _write(_rows(prompts, "spd"), tmp_path / f"spd{suffix}")
    trace = load_trace(path)
    scenario = replace(
        ideal("spd", width=stages),
        acceptance=AcceptanceSpec(kind="trace", trace_path=path),
        workload=Workload(prompt_tokens=16, new_tokens=length, num_requests=len(prompts)),
    )
    result = simulate(scenario, record_intervals=False)
    assert (
        sum(v.accepted for v in result.verifications)
        == trace.accepted_total
        == sum(map(sum, prompts.values()))
    )
    assert [v.accepted for v in result.verifications] == [x for o in prompts.values() for x in o]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    verifications=st.lists(st.tuples(st.integers(0, 7), st.integers(1, 7)), min_size=1, max_size=30),
    name=st.sampled_from(["eagle3", "draft-model", "mtp", "dflash", "peagle"]),
    suffix=st.sampled_from([".csv", ".parquet"]),
)
def test_chain_trace_replay_reproduces_the_accept_count(tmp_path, verifications, name, suffix):
    outcomes = [(min(accepted, width), width) for accepted, width in verifications]
    path = _write(_rows({"p": outcomes}, "chain"), tmp_path / f"chain{suffix}")
    new_tokens = sum(accepted + 1 for accepted, _ in outcomes)
    scenario = replace(
        ideal(name, width=7),
        acceptance=AcceptanceSpec(kind="trace", trace_path=path),
        workload=Workload(prompt_tokens=16, new_tokens=new_tokens, num_requests=1),
    )
    result = simulate(scenario, record_intervals=False)
    assert sum(v.accepted for v in result.verifications) == sum(a for a, _ in outcomes)
    assert len(result.verifications) == len(outcomes)


def test_replay_wraps_around_and_cycles_prompts(tmp_path):
    path = _write(_rows({"a": [1, 0], "b": [0, 0]}, "spd"), tmp_path / "t.csv")
    scenario = replace(
        ideal("spd", width=2),
        acceptance=AcceptanceSpec(kind="trace", trace_path=path),
        workload=Workload(prompt_tokens=16, new_tokens=4, num_requests=3),
    )
    result = simulate(scenario, record_intervals=False)
    assert [v.accepted for v in result.verifications] == [1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["accepted"]), "missing column 'accepted'"),
        (lambda f: f.assign(accepted=2), "column 'accepted' must be 0 or 1"),
        (lambda f: f.assign(verify_index="x"), "column 'verify_index' must hold integers"),
        (lambda f: f.assign(state="warm"), "column 'state' has \\['warm'\\]"),
        (lambda f: f.iloc[0:0], "no rows"),
    ],
)
def test_bad_trace_files_give_one_line_errors(tmp_path, mutate, message):
    path = _write(mutate(_rows({"p": [1, 0, 1]}, "spd")), tmp_path / "bad.csv")
    with pytest.raises(SpdsimError, match=message) as error:
        load_trace(path)
    assert "\n" not in str(error.value)


def test_missing_or_unreadable_trace(tmp_path):
    with pytest.raises(SpdsimError, match="no such file"):
        load_trace(tmp_path / "absent.csv")
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    with pytest.raises(SpdsimError, match="cannot read"):
        load_trace(broken)
