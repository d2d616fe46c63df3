"""The vectorised full trace of a deterministic pipeline equals the cycle-by-cycle recording, span for span."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_scenarios import roofline

import spdsim.engine.run as run
from spdsim.engine.run import simulate
from spdsim.scenario.config import AcceptanceSpec, Hardware, Overheads, Workload


def _cycle_by_cycle(monkeypatch, scenario):
    """Force the per-cycle SimPy path: jitter switched on with a spread of zero (every factor is exactly 1)."""
    original = run.request_streams

    def streams(s, count=None):
        out = original(s, count)
        for stream in out:
            stream.jitter.enabled = True
        return out

    with monkeypatch.context() as patch:
        patch.setattr(run, "request_streams", streams)
        return simulate(scenario)


@settings(max_examples=25, deadline=None)
@given(
    stages=st.integers(1, 6),
    alpha=st.floats(0.0, 1.0),
    placement=st.sampled_from(["own-gpu", "stage0"]),
    name=st.sampled_from(["spd", "ppsd"]),
    crop_ns=st.sampled_from([0, 7_000]),
    new_tokens=st.integers(1, 40),
    seed=st.integers(0, 5),
)
def test_vectorised_trace_equals_cycle_by_cycle(stages, alpha, placement, name, crop_ns, new_tokens, seed):
    monkeypatch = pytest.MonkeyPatch()
    scenario = roofline(name, num_stages=stages, drafter_placement=placement)
    hardware = replace(scenario.hardware or Hardware("x", 1.0, 1.0), crop_ns=crop_ns)
    scenario = replace(
        scenario,
        hardware=hardware,
        acceptance=AcceptanceSpec(kind="iid", alpha=alpha),
        overheads=Overheads(control_ns=3_000, gather_ns=2_000, sampling_ns=1_000, fixed_cycle_ns=500),
        workload=Workload(prompt_tokens=16, new_tokens=new_tokens, num_requests=2),
        seed=seed,
    )
    if scenario.model is not None and scenario.model.num_layers % stages:
        return
    fast = simulate(scenario)
    slow = _cycle_by_cycle(monkeypatch, scenario)
    assert list(fast.intervals) == list(slow.intervals)
    assert list(fast.tokens) == list(slow.tokens)
    assert fast.resource_busy_ns == slow.resource_busy_ns
    assert fast.iterations == slow.iterations
