"""The serving engine: one request at concurrency 1 is the engine before serving workloads, row for row;
concurrency limits, FCFS order, Little's law and in-order commits under arrivals."""

from __future__ import annotations

import hashlib
import json
from dataclasses import astuple, replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_scenarios import ideal, roofline

from spdsim.engine.metrics import request_latencies_ns, summarize
from spdsim.engine.run import simulate
from spdsim.errors import SpdsimError
from spdsim.methods import METHODS

REFERENCE = Path(__file__).parent / "data" / "serving" / "sequential_reference.json"


def digest(result) -> str:
    """SHA-256 of a Result's rows, as the reference was computed (tests/data/README.md)."""
    h = hashlib.sha256()
    for rows in (result.tokens, result.verifications, result.intervals):
        for row in rows:
            h.update(repr(astuple(row)).encode())
        h.update(b"|")
    h.update(
        repr(
            (tuple(result.request_start_ns), result.end_ns, result.iterations, tuple(result.resource_busy_ns))
        ).encode()
    )
    return h.hexdigest()


def _one_request_runs():
    """Every method (SPD with both drafter placements) on the tests' own roofline scenario (no presets), one
    request of 300 tokens after a 2 ms prefill, with and without jitter: as the reference was made."""
    for name in METHODS:
        for placement in ("own-gpu", "stage0") if name == "spd" else ("own-gpu",):
            for jitter in (0.0, 0.05):
                s = roofline(
                    name, num_stages=4, spec_layers=2, draft_tokens=4, k_max=8, drafter_placement=placement
                )
                s = replace(
                    s,
                    workload=replace(s.workload, num_requests=1, new_tokens=300, prefill_ns=2_000_000),
                    overheads=replace(s.overheads, jitter_cv=jitter),
                )
                yield f"{name}/{placement}/jitter{jitter}", s


@pytest.mark.parametrize(
    "serving",
    [
        {},
        {"arrival": "closed", "max_concurrency": 1},
        {"arrival_rate": 3.0},
        {"arrival_rate": 3.0, "burstiness": 0.5},
    ],
    ids=["sequential", "closed-1", "poisson", "gamma"],
)
def test_one_request_at_concurrency_one_is_the_engine_before_serving(serving):
    reference = json.loads(REFERENCE.read_text())
    runs = dict(_one_request_runs())
    assert set(runs) == set(reference)
    for label, scenario in runs.items():
        scenario = replace(scenario, workload=replace(scenario.workload, **serving))
        assert digest(simulate(scenario)) == reference[label], label


def _served(name="ar", *, requests=200, rate=0.0, concurrency=0, new_tokens=40, seed=3, **workload):
    scenario = ideal(name, 0.7, 4, new_tokens=new_tokens, requests=requests, seed=seed)
    return replace(
        scenario,
        workload=replace(
            scenario.workload,
            arrival_rate=rate,
            max_concurrency=concurrency,
            prefill_ns=50_000,
            **workload,
        ),
    )


def _in_flight(result) -> np.ndarray:
    """Requests sent and not finished, after every send/finish event (events at one instant netted)."""
    per = request_latencies_ns(result)
    times = np.concatenate([per["sent"], per["last"]])
    steps = np.concatenate([np.ones(len(per["sent"])), -np.ones(len(per["last"]))])
    order = np.lexsort((steps, times))  # finishes before sends at one instant
    return np.cumsum(steps[order])


def test_max_concurrency_caps_requests_in_flight_and_closed_loop_keeps_it_full():
    closed = simulate(_served(requests=30, concurrency=3, arrival="closed"), record_intervals=False)
    assert _in_flight(closed).max() == 3
    capped = simulate(_served(requests=100, rate=2_000.0, concurrency=2), record_intervals=False)
    assert _in_flight(capped).max() <= 2


def test_unbatched_server_is_fcfs_and_never_overlaps_requests():
    result = simulate(_served(requests=60, rate=3_000.0), record_intervals=False)
    per = request_latencies_ns(result)
    starts = np.asarray(result.request_start_ns)
    assert np.all(np.diff(starts) > 0)  # served in arrival order
    assert np.all(starts[1:] >= per["last"][:-1] + 50_000)  # the next prefill starts after the last token


@pytest.mark.parametrize(("name", "rate"), [("ar", 650.0), ("eagle3", 1_800.0), ("spd", 1_800.0)])
def test_littles_law_on_a_poisson_run(name, rate):
    """Time-average requests in the system = request throughput x mean E2E latency (within 2%), with the
    time average integrated from the engine's send and finish times."""
    result = simulate(_served(name, requests=400, rate=rate), record_intervals=False)
    summary = summarize(result)
    per = request_latencies_ns(result)
    times = np.concatenate([per["sent"], per["last"]])
    steps = np.concatenate([np.ones(len(per["sent"])), -np.ones(len(per["last"]))])
    order = np.argsort(times, kind="stable")
    occupancy = np.cumsum(steps[order])[:-1]
    area = float(np.sum(occupancy * np.diff(times[order])))
    mean_concurrency = area / (times.max() - times.min())
    littles = summary["request_throughput"] * summary["mean_e2el_ms"] / 1e3
    assert mean_concurrency > 1.0  # requests did queue
    assert mean_concurrency == pytest.approx(littles, rel=0.02)


@settings(max_examples=15, deadline=None)
@given(
    name=st.sampled_from(["ar", "eagle3", "spd", "specdecpp"]),
    rate=st.floats(100.0, 5_000.0),
    concurrency=st.integers(0, 4),
    seed=st.integers(0, 100),
)
def test_no_request_commits_out_of_order(name, rate, concurrency, seed):
    result = simulate(
        _served(name, requests=12, rate=rate, concurrency=concurrency, seed=seed, length_range_ratio=0.5),
        record_intervals=False,
    )
    by_request: dict[int, list] = {}
    for token in result.tokens:
        by_request.setdefault(token.request, []).append(token)
    for tokens in by_request.values():
        assert [t.index for t in tokens] == list(range(len(tokens)))
        assert all(a.commit_ns <= b.commit_ns for a, b in zip(tokens, tokens[1:], strict=False))


def test_serving_metrics_closed_forms_for_ar():
    """AR alone on the GPU: every ITL = TPOT = one step; TTFT of an unqueued request = prefill + one step."""
    scenario = _served("ar", requests=5, rate=1.0)  # one request per second: nobody queues
    step_ns = 32 * 1_000
    summary = summarize(simulate(scenario, record_intervals=False))
    assert summary["median_itl_ms"] == pytest.approx(step_ns / 1e6)
    assert summary["p99_tpot_ms"] == pytest.approx(step_ns / 1e6)
    assert summary["median_ttft_ms"] == pytest.approx((50_000 + step_ns) / 1e6)
    assert summary["median_e2el_ms"] == pytest.approx((50_000 + 40 * step_ns) / 1e6)
    assert summary["request_goodput"] is None
    strict = replace(scenario, workload=replace(scenario.workload, slo_ttft_ms=0.05))
    assert summarize(simulate(strict, record_intervals=False))["request_goodput"] == 0.0


def test_batching_refused_for_methods_without_a_batched_schedule():
    with pytest.raises(SpdsimError, match="max_batch"):
        simulate(_served("cascade", requests=2, max_batch=4))
