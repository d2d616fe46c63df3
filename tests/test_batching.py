"""Continuous batching: the roofline AR step at batch B follows its closed form on both sides of the ridge point,
FCFS admission under max_batch, prefill scheduling, and no resource running two things at once."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_scenarios import H100, QWEN35_4B_SHAPE, ideal, roofline

from spdsim.engine.metrics import request_latencies_ns, summarize
from spdsim.engine.run import simulate
from spdsim.scenario.config import Overheads

PROMPT = 1_000


def _closed_batch(name, batch, *, new_tokens=2, **method):
    """``batch`` requests sent at once into a batch of ``batch``: every decode step holds all of them."""
    scenario = roofline(name, **method)
    return replace(
        scenario,
        overheads=Overheads(),
        workload=replace(
            scenario.workload,
            prompt_tokens=PROMPT,
            new_tokens=new_tokens,
            num_requests=batch,
            prefill_ns=0,
            arrival="closed",
            max_concurrency=batch,
            max_batch=batch,
        ),
    )


def ar_step_closed_form_ns(batch: int, kv: int) -> float:
    """Textbook roofline of one AR step over B sequences of context kv (Qwen3.5-4B shape, H100, default
    efficiencies): embedding + L x max(bytes / bandwidth, FLOPs / peak) + lm_head; every operand written out."""
    s, hw = QWEN35_4B_SHAPE, H100
    bandwidth = hw.mem_bandwidth_gbps * hw.bandwidth_efficiency  # B/ns
    flops_rate = hw.peak_tflops * 1e3 * hw.flops_efficiency  # FLOP/ns
    attn, kv_out = s.num_attention_heads * s.head_dim, s.num_kv_heads * s.head_dim
    params = (
        s.hidden_size * (attn + 2 * kv_out) + attn * s.hidden_size + 3 * s.hidden_size * s.intermediate_size
    )
    layer_bytes = params * s.dtype_bytes + batch * kv * 2 * kv_out * s.dtype_bytes
    layer_flops = 2 * batch * params + 4 * batch * kv * attn
    layers = s.num_layers * max(layer_bytes / bandwidth, layer_flops / flops_rate)
    head_params = s.hidden_size * s.vocab_size
    head = max(head_params * s.dtype_bytes / bandwidth, 2 * batch * head_params / flops_rate)
    embed = batch * s.hidden_size * s.dtype_bytes / bandwidth
    return embed + layers + head


def test_ridge_point_lies_inside_the_tested_batches():
    """Memory-bound at B = 1, compute-bound at B = 512: the test below crosses the ridge point."""
    hw = H100
    ridge = (
        (hw.peak_tflops * 1e3 * hw.flops_efficiency) / (hw.mem_bandwidth_gbps * hw.bandwidth_efficiency) / 2
    )
    assert 1 < ridge < 512  # FLOPs per weight byte at the ridge, per sequence, bf16 weights


@pytest.mark.parametrize("batch", [1, 4, 32, 128, 256, 512])
def test_batched_ar_step_follows_the_roofline_closed_form(batch):
    """Each request's second token comes one step after its first: that step holds the whole batch at context
    PROMPT + 1, so the ITL is the batched step (within 1%, below and above the ridge point)."""
    if QWEN35_4B_SHAPE.linear_attention_layers:
        pytest.skip("closed form written for full-attention layers")
    result = simulate(_closed_batch("ar", batch), record_intervals=False)
    summary = summarize(result)
    assert summary["median_itl_ms"] * 1e6 == pytest.approx(
        ar_step_closed_form_ns(batch, PROMPT + 1), rel=0.01
    )


def test_batched_step_grows_sublinearly_then_linearly():
    """Memory-bound: 8 sequences cost far less than 8 steps; compute-bound: doubling the batch ~doubles it."""
    itl = {
        b: summarize(simulate(_closed_batch("ar", b), record_intervals=False))["median_itl_ms"]
        for b in (1, 8, 512, 1024)
    }
    assert itl[8] < 1.5 * itl[1]
    assert itl[1024] / itl[512] == pytest.approx(2.0, rel=0.1)


@pytest.mark.parametrize("name", ["ar", "eagle3", "dflash", "spd", "ppsd"])
def test_batch_of_one_request_is_close_to_the_unbatched_schedule(name):
    """A batch that only ever holds one request prices each step like the one-request schedule (same roofline
    terms; differences are rounding of a few ns per phase, and SPD's co-located overlap model)."""
    method = {"num_stages": 4, "spec_layers": 1} if name in ("spd", "ppsd") else {"draft_tokens": 3}
    one = _closed_batch(name, 1, new_tokens=200, **method)
    batched = replace(one, workload=replace(one.workload, max_batch=2))
    a = summarize(simulate(one, record_intervals=False))["tokens_per_s"]
    b = summarize(simulate(batched, record_intervals=False))["tokens_per_s"]
    assert b == pytest.approx(a, rel=0.01)


def test_max_batch_bounds_the_running_requests_and_admission_is_fcfs():
    scenario = _closed_batch("ar", 40, new_tokens=20)
    scenario = replace(scenario, workload=replace(scenario.workload, max_batch=8, prefill_ns=10_000))
    result = simulate(scenario, record_intervals=False)
    starts = np.asarray(result.request_start_ns)
    per = request_latencies_ns(result)
    assert np.all(np.diff(starts) >= 0)  # admitted in order
    for t in starts:  # at any decode start, at most 8 requests have started and not finished
        assert int(np.sum((starts <= t) & (per["last"] > t))) <= 8


def test_chunked_prefill_lets_decodes_run_beside_a_long_prompt():
    """Without chunks a long prompt's prefill stalls every running decode (the worst ITL is a whole prefill);
    with chunks of 512 tokens the worst ITL is one decode step carrying a chunk."""
    base = ideal("ar", requests=6, new_tokens=200)
    base = replace(base, model=QWEN35_4B_SHAPE, hardware=H100, latency=replace(base.latency, kind="roofline"))
    workload = replace(base.workload, prompt_tokens=4_000, arrival_rate=5.0, max_batch=8, prefill="modelled")
    whole = simulate(replace(base, workload=workload), record_intervals=False)
    parts = simulate(replace(base, workload=replace(workload, chunk_tokens=512)), record_intervals=False)
    worst_whole = request_latencies_ns(whole)["itl"].max()
    worst_parts = request_latencies_ns(parts)["itl"].max()
    assert worst_parts < 0.5 * worst_whole


def _overlaps(result) -> list:
    spans: dict[str, list[tuple[int, int]]] = {}
    for iv in result.intervals:
        spans.setdefault(iv.resource, []).append((iv.start_ns, iv.end_ns))
    bad = []
    for resource, items in spans.items():
        items.sort()
        bad += [(resource, a, b) for a, b in zip(items, items[1:], strict=False) if b[0] < a[1]]
    return bad


@settings(max_examples=15, deadline=None)
@given(
    name=st.sampled_from(["ar", "eagle3", "mtp", "peagle", "spd", "ppsd"]),
    batch=st.integers(1, 6),
    rate=st.floats(200.0, 20_000.0),
    placement=st.sampled_from(["own-gpu", "stage0"]),
    alpha=st.floats(0.0, 1.0),
    seed=st.integers(0, 50),
)
def test_no_stage_runs_two_things_at_once_and_tokens_commit_in_order(
    name, batch, rate, placement, alpha, seed
):
    scenario = roofline(name, num_stages=4, spec_layers=1, draft_tokens=3, drafter_placement=placement)
    scenario = replace(
        scenario,
        acceptance=replace(scenario.acceptance, alpha=alpha),
        overheads=replace(scenario.overheads, jitter_cv=0.0),
        workload=replace(
            scenario.workload,
            num_requests=10,
            new_tokens=12,
            arrival_rate=rate,
            max_batch=batch,
            length_range_ratio=0.5,
        ),
        seed=seed,
    )
    result = simulate(scenario)
    assert not _overlaps(result)
    last: dict[int, tuple[int, int]] = {}
    for token in result.tokens:
        index, time = last.get(token.request, (-1, -1))
        assert token.index == index + 1 and token.commit_ns >= time
        last[token.request] = (token.index, token.commit_ns)
    assert len(last) == 10


@pytest.mark.parametrize(
    ("override", "named"),
    [
        (["workload.chunk_tokens=64", 'workload.prefill="modelled"'], "workload.chunk_tokens"),
        (["overheads.jitter_cv=0.2"], "overheads.jitter_cv"),
        (['method.verify_placement="last-stage"'], "method.verify_placement = last-stage"),
    ],
)
def test_batched_spd_refuses_what_it_does_not_model_in_one_line(override, named):
    from spdsim.errors import SpdsimError
    from spdsim.scenario.files import load_runs

    run = load_runs(
        methods=["spd"],
        overrides=["workload.num_requests=3", "workload.max_batch=2", "workload.new_tokens=8", *override],
    )[0]
    with pytest.raises(SpdsimError, match=f"batched spd does not model {named}"):
        simulate(run.scenario, record_intervals=False)
