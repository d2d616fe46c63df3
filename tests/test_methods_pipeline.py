"""SPD / PPSD schedule: event log of a small run, ideal reduction, placement, flush, bubbles, and the co-located
drafter's calibrated overlap with stage 0."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sim_scenarios import ideal

from spdsim.engine.closed_form import predict, spd_rho
from spdsim.engine.metrics import summarize
from spdsim.engine.result import FLUSHED
from spdsim.engine.run import simulate
from spdsim.errors import SpdsimError
from spdsim.latency.model import PPM
from spdsim.methods import get_method
from spdsim.methods.pipeline import shared_gpu_ns, stage_layer_counts
from spdsim.scenario.checks import validate_scenario
from spdsim.scenario.config import (
    AcceptanceSpec,
    LatencySpec,
    MethodSpec,
    ModelShape,
    Overheads,
    Scenario,
    Workload,
)

THREE_LAYERS = ModelShape("three", 3, 64, 2, 1, 32, 128, 100)


def _write_spd_trace(path, outcomes):
    lines = [
        "prompt_id,verify_index,position,method,draft_index,state,width,drafted_token,target_token,accepted"
    ]
    for i, accepted in enumerate(outcomes):
        lines.append(f"p0,{i},{10 + i},spd,1,saturated,3,5,{5 if accepted else 6},{accepted}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _small_spd(trace_path):
    return Scenario(
        method=MethodSpec(name="spd", num_stages=3, spec_layers=1),
        model=THREE_LAYERS,
        latency=LatencySpec(kind="constant", layer_ns=100, pdm_ns=50, head_ns=10),
        acceptance=AcceptanceSpec(kind="trace", trace_path=trace_path),
        overheads=Overheads(control_ns=5),
        workload=Workload(prompt_tokens=8, new_tokens=4, num_requests=1),
    )


def test_event_log_of_n3_run_with_a_reject(tmp_path):
    """n = 3: two fill cycles, accept, reject (flush: 3 stage forwards + 2 drafts), two refill cycles, accepts."""
    result = simulate(_small_spd(_write_spd_trace(tmp_path / "t.csv", [1, 0, 1, 1])))
    log = sorted(
        [(i.start_ns, f"{i.resource} {i.label} {i.kind} c{i.iteration}") for i in result.intervals]
        + [
            (v.time_ns, f"verify {v.state} {'accept' if v.accepted else 'reject'}")
            for v in result.verifications
        ]
        + [(t.commit_ns, f"commit {t.index}") for t in result.tokens]
    )
    cycle_starts = [0, 105, 210, 325, 440, 545, 650, 765]  # fill 105, fill 105, verify 115, ..., refill 105
    assert [time for time, what in log if what.startswith("controller control")] == cycle_starts
    stage0 = [(time, what) for time, what in log if what.startswith("stage0")]
    assert stage0 == [
        (5, "stage0 forward busy c0"),
        (110, "stage0 forward busy c1"),
        (215, "stage0 forward flushed c2"),
        (330, "stage0 forward flushed c3"),
        (445, "stage0 forward busy c4"),
        (550, "stage0 forward busy c5"),
        (655, "stage0 forward busy c6"),
        (770, "stage0 forward busy c7"),
    ]
    assert [(time, what) for time, what in log if what.startswith(("verify", "commit"))] == [
        (325, "commit 0"),
        (325, "verify refill accept"),
        (440, "commit 1"),
        (440, "verify saturated reject"),
        (765, "commit 2"),
        (765, "verify refill accept"),
        (880, "commit 3"),
        (880, "verify saturated accept"),
    ]
    flushed = sorted((i.iteration, i.resource) for i in result.intervals if i.kind == FLUSHED)
    assert flushed == [(2, "drafter"), (2, "stage0"), (3, "drafter"), (3, "stage0"), (3, "stage1")]
    stages_per_cycle = [
        sum(1 for i in result.intervals if i.iteration == c and i.label == "forward") for c in range(8)
    ]
    assert stages_per_cycle == [1, 2, 3, 3, 1, 2, 3, 3]
    assert result.end_ns == 880 and result.iterations == 8


@pytest.mark.parametrize("stages", [2, 4, 8, 16])
@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_ideal_pipeline_reduces_exactly_to_rho(alpha, stages):
    """Zero overheads, balanced stages of T/n, PDM <= a stage: cycles = (n-1)(1+R) + N, S = n·ρ exactly."""
    scenario = ideal("spd", alpha, stages, new_tokens=300, requests=1)
    result = simulate(scenario, record_intervals=False)
    rejections = sum(1 for v in result.verifications[:-1] if not v.accepted)
    assert result.iterations == (stages - 1) * (1 + rejections) + 300
    ar = simulate(replace(scenario, method=replace(scenario.method, name="ar")), record_intervals=False)
    speedup = summarize(result, ar)["speedup"]
    assert speedup == pytest.approx(stages * 300 / result.iterations, rel=1e-12)
    if alpha in (0.0, 1.0):
        assert predict(scenario).rho == pytest.approx(300 / result.iterations, rel=1e-12)
        assert predict(scenario).rho == pytest.approx(spd_rho(alpha, stages), rel=0.06)


def test_bubble_fraction_when_every_draft_is_rejected():
    """α = 0: each token needs n cycles with 1..n stages active, so the stages idle (n-1)/(2n) of the time."""
    stages = 4
    result = simulate(ideal("spd", 0.0, stages, new_tokens=50, requests=1))
    assert summarize(result)["bubble_fraction"] == pytest.approx((stages - 1) / (2 * stages), rel=1e-12)


def test_drafter_on_stage0_serializes_and_saves_a_gpu():
    base = ideal("spd", 1.0, 4, new_tokens=200, requests=1)
    stage_ns = 8 * 1_000
    own = simulate(base, record_intervals=False)
    shared_method = replace(base.method, drafter_placement="stage0")
    shared = simulate(replace(base, method=shared_method), record_intervals=False)
    assert (
        get_method("spd").gpus(base) == 5 and get_method("spd").gpus(replace(base, method=shared_method)) == 4
    )
    steady = (
        own.tokens[-1].commit_ns - own.tokens[-2].commit_ns,
        shared.tokens[-1].commit_ns - shared.tokens[-2].commit_ns,
    )
    assert steady == (stage_ns, stage_ns + 1_000)  # own GPU: hidden; stage 0: forward + PDM back to back
    slowed = replace(base, method=shared_method, overheads=Overheads(drafter_contention=1.5))
    result = simulate(slowed, record_intervals=False)
    assert result.tokens[-1].commit_ns - result.tokens[-2].commit_ns == int(1.5 * (stage_ns + 1_000))
    assert predict(slowed).iteration_ns == pytest.approx(1.5 * 9_000, rel=1e-9)


def test_slow_drafter_sits_on_the_critical_path():
    scenario = ideal("spd", 1.0, 8, new_tokens=100, requests=1)
    slow = replace(scenario, latency=replace(scenario.latency, pdm_ns=7_000))
    result = simulate(slow, record_intervals=False)
    assert result.tokens[-1].commit_ns - result.tokens[-2].commit_ns == 7_000
    assert predict(slow).iteration_ns == pytest.approx(7_000)


def test_overheads_add_to_the_cycle():
    overheads = Overheads(control_ns=300, p2p_ns=200, gather_ns=100, fixed_cycle_ns=50, sampling_ns=25)
    scenario = replace(ideal("spd", 1.0, 4, new_tokens=50, requests=1), overheads=overheads)
    scenario = replace(scenario, latency=replace(scenario.latency, embed_ns=400, head_ns=70))
    result = simulate(scenario)
    # saturated cycle: control + (stage0: embed + 8 layers + send) + head + sampling + fixed
    expected = 300 + (400 + 8_000 + 200) + 70 + 25 + 50
    assert result.tokens[-1].commit_ns - result.tokens[-2].commit_ns == expected
    assert predict(scenario).tokens_per_s == pytest.approx(summarize(result)["tokens_per_s"], rel=0.02)


def test_verify_on_the_last_stage_leaves_the_serial_part_of_the_cycle():
    """Controller: the verify follows the slowest member; last stage: it lengthens only the last stage's member,
    so with stage 0 + a co-located drafter as the slowest member it costs nothing."""
    base = ideal("spd", 1.0, 2, new_tokens=60, requests=1)
    base = replace(
        base,
        latency=replace(base.latency, head_ns=300),
        method=replace(base.method, drafter_placement="stage0"),
    )
    last = replace(base, method=replace(base.method, verify_placement="last-stage"))
    stage_ns = 16 * 1_000  # 32 layers / 2 stages at 1 us
    steady = [
        (r.tokens[-1].commit_ns - r.tokens[-2].commit_ns)
        for r in (simulate(base, record_intervals=False), simulate(last, record_intervals=False))
    ]
    assert steady == [stage_ns + 1_000 + 300, stage_ns + 1_000]
    assert predict(last).iteration_ns == pytest.approx(stage_ns + 1_000)
    # every path sees the verify on the last stage: the cycle-by-cycle (jittered) engine and the recorded spans
    jittered = replace(last, overheads=replace(last.overheads, jitter_cv=1e-9))
    assert simulate(jittered).tokens[-1].commit_ns == pytest.approx(
        simulate(last, record_intervals=False).tokens[-1].commit_ns, rel=1e-6
    )
    last_stage_busy = [i.end_ns - i.start_ns for i in simulate(last).intervals if i.resource == "stage1"]
    assert max(last_stage_busy) == stage_ns + 300


def test_ppsd_drafts_with_its_early_exit_on_stage0():
    scenario = replace(ideal("ppsd", 1.0, 4, new_tokens=50, requests=1))
    scenario = replace(scenario, latency=replace(scenario.latency, head_ns=500))
    result = simulate(scenario, record_intervals=False)
    assert get_method("ppsd").gpus(scenario) == 4
    # stage 0 runs its 8 layers then the exit head; the last stage's head verifies after the barrier
    assert result.tokens[-1].commit_ns - result.tokens[-2].commit_ns == 8_000 + 500 + 500
    deeper = replace(scenario, method=replace(scenario.method, exit_layer=10))
    result = simulate(deeper, record_intervals=False)
    assert result.tokens[-1].commit_ns - result.tokens[-2].commit_ns == 8_000 + 2_000 + 500 + 500


def test_stage_split_even_or_explicit():
    scenario = ideal("spd", width=4)
    assert stage_layer_counts(scenario) == (8, 8, 8, 8)
    uneven = replace(scenario, method=replace(scenario.method, stage_layers=(10, 8, 8, 6)))
    assert stage_layer_counts(uneven) == (10, 8, 8, 6)
    result = simulate(replace(uneven, acceptance=AcceptanceSpec(alpha=1.0)), record_intervals=False)
    assert result.tokens[-1].commit_ns - result.tokens[-2].commit_ns == 10_000
    with pytest.raises(SpdsimError, match="num_stages"):
        stage_layer_counts(replace(scenario, method=replace(scenario.method, num_stages=5)))


@pytest.mark.parametrize("placement", ["own-gpu", "stage0"])
@pytest.mark.parametrize(("name", "alpha", "stages"), [("spd", 0.7, 4), ("spd", 0.3, 8), ("ppsd", 0.8, 2)])
def test_busy_totals_without_intervals_equal_the_recorded_ones(name, alpha, stages, placement):
    """The deterministic fast path keeps per-resource busy totals that match the interval record exactly."""
    scenario = ideal(name, alpha, stages, new_tokens=120, requests=2, drafter_placement=placement)
    overheads = Overheads(control_ns=70, p2p_ns=30, gather_ns=20, fixed_cycle_ns=10, drafter_contention=1.25)
    scenario = replace(scenario, overheads=overheads, latency=replace(scenario.latency, embed_ns=300))
    recorded, fast = simulate(scenario), simulate(scenario, record_intervals=False)
    assert fast.tokens == recorded.tokens and fast.iterations == recorded.iterations
    assert fast.resource_busy_ns == recorded.resource_busy_ns
    jittered = replace(scenario, overheads=replace(overheads, jitter_cv=0.3))
    assert simulate(jittered, record_intervals=False).resource_busy_ns == simulate(jittered).resource_busy_ns


@given(
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.integers(0, PPM),
    st.integers(0, PPM),
)
def test_shared_gpu_time_lies_between_overlap_and_serial(a, b, low, high):
    low, high = sorted((low, high))
    shared = int(shared_gpu_ns([a, b], low))
    assert max(a, b) <= shared <= a + b
    assert shared <= int(shared_gpu_ns([a, b], high))  # more contention never shortens the pair
    assert int(shared_gpu_ns([a, b], PPM)) == a + b and int(shared_gpu_ns([a, b], 0)) == max(a, b)


@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=9))
def test_concurrent_members_cost_their_sum_at_c1_and_their_maximum_at_c0(members):
    assert int(shared_gpu_ns(members, PPM)) == sum(members)
    assert int(shared_gpu_ns(members, 0)) == max(members)


def test_equal_concurrent_members_pay_c_of_every_member_but_one():
    """g equal members t: t + c·(g - 1)·t (the profiler's own reading of c)."""
    assert int(shared_gpu_ns([1000] * 5, 250_000)) == 1000 + 1000
    assert int(shared_gpu_ns([1000, 1000, 1000], 600_000)) == 2200
    assert int(shared_gpu_ns([900, 300, 100], 500_000)) == 900 + 200  # max + c·(the rest)


def _colocated_profile(path, contention=None, verify_fixed_us=None, stream_overlap=None):
    """A flat two-layer profile (µs): a layer 100, embed 10, head 20, PDM 60 — stage 0 = 110, stage 1 = 100."""
    grid = [(layers, q, kv) for layers in (1, 2) for q in (1, 4) for kv in (0, 4096)]
    stats = {"p10_us": 0.0, "p90_us": 0.0, "samples": 1}

    def entry(value, **coords):
        return {**coords, "median_us": value, **stats, "p10_us": value, "p90_us": value}

    phases = {
        "layers": [entry(100.0 * layers, layers=layers, query_tokens=q, kv_len=kv) for layers, q, kv in grid],
        "embed": [entry(10.0, query_tokens=q) for q in (1, 4)],
        "head": [entry(20.0, query_tokens=q) for q in (1, 4)],
        "drafter": [
            entry(60.0, spec_layers=1, query_tokens=q, kv_len=kv) for q in (1, 4) for kv in (0, 4096)
        ],
    }
    if contention is not None:
        phases["colocated_contention"] = [entry(1000.0 * contention, num_stages=2)]
    if verify_fixed_us is not None:
        phases["verify_fixed"] = [entry(verify_fixed_us, num_stages=2)]
    if stream_overlap is not None:
        phases["stream_overlap"] = [entry(1000.0 * c, streams=g) for g, c in stream_overlap.items()]
    profile = {
        "schema_version": 1,
        "kind": "spdsim.profile",
        "hardware": {"name": "test"},
        "model": {
            "name": "two",
            "num_layers": 2,
            "hidden_size": 64,
            "num_attention_heads": 2,
            "num_kv_heads": 1,
            "head_dim": 32,
            "intermediate_size": 128,
            "vocab_size": 100,
        },
        "dtype": "bfloat16",
        "software": {},
        "date": "2026-11-22",
        "phases": phases,
    }
    path.write_text(json.dumps(profile))
    return str(path)


def _colocated_scenario(profile_path, trace_path, placement="stage0", name="spd", stages="gpu-per-stage"):
    return Scenario(
        method=MethodSpec(
            name=name, num_stages=2, spec_layers=1, drafter_placement=placement, stage_placement=stages
        ),
        model=ModelShape("two", 2, 64, 2, 1, 32, 128, 100),
        latency=LatencySpec(kind="measured", profile_path=profile_path),
        acceptance=AcceptanceSpec(kind="trace", trace_path=trace_path),
        workload=Workload(prompt_tokens=8, new_tokens=4, num_requests=1),
    )


def _commit_gaps_us(result):
    times = [0] + [t.commit_ns for t in result.tokens]
    return [(b - a) / 1e3 for a, b in zip(times, times[1:], strict=False)]


@pytest.mark.parametrize("record", [True, False])
def test_colocated_drafter_overlaps_stage0_by_the_calibrated_contention(tmp_path, record):
    """n = 2, stage 0 = 110 µs ∥ PDM 60 µs, stage 1 = 100, head 20. Trace accept, reject, accept, accept:
    commits after fill+verify, verify, refill+verify, verify; busy(stage 0 + PDM) = 110 + 60c."""
    trace = _write_spd_trace(tmp_path / "t.csv", [1, 0, 1, 1])
    serial_path = _colocated_profile(tmp_path / "serial.json")
    serial = simulate(_colocated_scenario(serial_path, trace), record_intervals=record)
    unit = simulate(
        _colocated_scenario(_colocated_profile(tmp_path / "c1.json", 1.0), trace), record_intervals=record
    )
    assert unit.tokens == serial.tokens and unit.intervals == serial.intervals  # c = 1: the old serial model
    assert unit.resource_busy_ns == serial.resource_busy_ns
    for contention in (0.0, 0.5, 1.0):
        path = _colocated_profile(tmp_path / f"c{contention}.json", contention, verify_fixed_us=7.0)
        result = simulate(_colocated_scenario(path, trace), record_intervals=record)
        busy = 110 + 60 * contention  # c = 0: max(a, b); c = 1: a + b
        verify = busy + 20 + 7  # only verification cycles pay head + verify_fixed
        assert _commit_gaps_us(result) == pytest.approx([busy + verify, verify, busy + verify, verify])
        assert dict(result.resource_busy_ns)["stage0"] == round(6 * busy * 1e3)


def test_dedicated_drafter_and_ppsd_ignore_the_contention(tmp_path):
    trace = _write_spd_trace(tmp_path / "t.csv", [1, 1, 1, 1])
    serial_path = _colocated_profile(tmp_path / "serial.json")
    overlap_path = _colocated_profile(tmp_path / "c0.json", 0.0)
    for placement, name in (("own-gpu", "spd"), ("stage0", "ppsd")):
        serial = simulate(_colocated_scenario(serial_path, trace, placement, name), record_intervals=False)
        overlap = simulate(_colocated_scenario(overlap_path, trace, placement, name), record_intervals=False)
        assert serial.tokens == overlap.tokens


def test_stages_on_one_gpu_cost_the_sum_of_their_members():
    """One GPU (the executor's single-process SPD): a saturated cycle is every stage back to back plus the
    drafter (no send), not the slowest stage; spans lie end to end and one GPU is counted."""
    base = ideal("spd", 1.0, 4, new_tokens=60, requests=1)
    base = replace(
        base,
        latency=replace(base.latency, head_ns=300),
        method=replace(base.method, drafter_placement="stage0"),
        overheads=Overheads(control_ns=50, p2p_ns=200),
    )
    one = replace(base, method=replace(base.method, stage_placement="one-gpu"))
    stage_ns, pdm_ns = 8 * 1_000, 1_000  # 32 layers / 4 stages at 1 us, the ideal PDM
    steady = [
        r.tokens[-1].commit_ns - r.tokens[-2].commit_ns
        for r in (simulate(base, record_intervals=False), simulate(one, record_intervals=False))
    ]
    assert steady == [50 + stage_ns + pdm_ns + 200 + 300, 50 + 4 * stage_ns + pdm_ns + 300]
    fills = sum(50 + a * stage_ns + pdm_ns for a in range(1, 4))  # α = 1: only the start's fill cycles
    assert predict(one).iteration_ns == pytest.approx((fills + 60 * steady[1]) / (60 + 3), rel=1e-12)
    assert get_method("spd").gpus(one) == 1
    last = [i for i in simulate(one).intervals if i.label == "forward" and i.iteration == 40]
    ends = sorted((i.start_ns, i.end_ns) for i in last)
    assert len(ends) == 4 and all(a[1] <= b[0] for a, b in zip(ends, ends[1:], strict=False))


@pytest.mark.parametrize("record", [True, False])
def test_stages_on_one_gpu_overlap_by_the_profiled_stream_overlap(tmp_path, record):
    """n = 2 on one GPU: stage 0 = 110 µs, PDM 60, stage 1 = 100, head 20; c(2) = 0.5, c(3) = 0.25. A fill cycle
    is stage 0 ∥ PDM: 110 + 0.5·60; a saturated one stage 0 ∥ stage 1 ∥ PDM: 110 + 0.25·160, then the verify.
    Trace accept, reject, accept, accept. Each member's spans start with its cycle and end inside it."""
    trace = _write_spd_trace(tmp_path / "t.csv", [1, 0, 1, 1])
    path = _colocated_profile(tmp_path / "o.json", stream_overlap={2: 0.5, 3: 0.25})
    result = simulate(_colocated_scenario(path, trace, stages="one-gpu"), record_intervals=record)
    fill, saturated = 110 + 0.5 * 60, 110 + 0.25 * 160 + 20
    assert _commit_gaps_us(result) == pytest.approx(
        [fill + saturated, saturated, fill + saturated, saturated]
    )
    busy = dict(result.resource_busy_ns)
    assert (busy["stage0"], busy["stage1"], busy["drafter"]) == (6 * 110_000, 4 * 100_000, 6 * 60_000)
    if record:
        ends = [0] + [t.commit_ns for t in result.tokens]
        for i in result.intervals:
            cycle_start = max(e for e in ends if e <= i.start_ns)
            assert i.end_ns <= min(e for e in ends if e > i.start_ns)
            if i.label in ("forward", "pdm"):
                assert i.start_ns in (
                    cycle_start,
                    cycle_start + fill * 1e3,
                )  # with the cycle, not after a stage


def test_on_one_gpu_the_stream_overlap_alone_discounts_the_drafter(tmp_path):
    """A bundle calibrated on distributed runs (colocated_contention) and profiled for stream overlap: on one GPU
    the drafter overlaps the stages by c(g) only, not by both."""
    trace = _write_spd_trace(tmp_path / "t.csv", [1, 0, 1, 1])
    overlap = {2: 0.5, 3: 0.25}
    both = _colocated_profile(tmp_path / "both.json", contention=0.5, stream_overlap=overlap)
    alone = _colocated_profile(tmp_path / "alone.json", stream_overlap=overlap)
    gaps = [_commit_gaps_us(simulate(_colocated_scenario(p, trace, stages="one-gpu"))) for p in (both, alone)]
    assert gaps[0] == pytest.approx(gaps[1])
    assert gaps[0][1] == pytest.approx(110 + 0.25 * 160 + 20)


def test_a_stream_overlap_of_one_prices_one_gpu_exactly_as_without_the_phase(tmp_path):
    trace = _write_spd_trace(tmp_path / "t.csv", [1, 0, 1, 1])
    plain = _colocated_profile(tmp_path / "plain.json")
    unit = _colocated_profile(tmp_path / "unit.json", stream_overlap={2: 1.0, 3: 1.0})
    results = [
        simulate(_colocated_scenario(p, trace, stages="one-gpu"), record_intervals=True)
        for p in (plain, unit)
    ]
    assert results[0].tokens == results[1].tokens and results[0].intervals == results[1].intervals
    assert results[0].resource_busy_ns == results[1].resource_busy_ns
    busy = 110 + 60  # back to back: the sum of the members
    assert _commit_gaps_us(results[0])[1] == pytest.approx(busy + 100 + 20)


def test_ppsd_on_one_gpu_overlaps_its_stages_only(tmp_path):
    """PPSD's exit head follows stage 0 (part of its member, not a stream): a saturated cycle of n = 2 is the two
    stages at c(2) = 0.5: max(110 + 20, 100) + 0.5·100, then the verify."""
    trace = _write_spd_trace(tmp_path / "t.csv", [1, 1, 1, 1])
    path = _colocated_profile(tmp_path / "o.json", stream_overlap={2: 0.5, 3: 0.0})
    result = simulate(_colocated_scenario(path, trace, name="ppsd", stages="one-gpu"), record_intervals=False)
    assert _commit_gaps_us(result)[1:] == pytest.approx([130 + 50 + 20] * 3)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"drafter_placement": "own-gpu"}, "drafter_placement"),
        ({"tensor_parallel": 2}, "tensor_parallel"),
        ({"stage_placement": "two-gpus"}, "unknown placement"),
    ],
)
def test_one_gpu_placement_is_refused_where_it_cannot_hold(change, field):
    base = ideal("spd", 1.0, 4, new_tokens=10, requests=1)
    method = replace(base.method, **{"drafter_placement": "stage0", "stage_placement": "one-gpu", **change})
    with pytest.raises(SpdsimError, match=field):
        validate_scenario(replace(base, method=method))
