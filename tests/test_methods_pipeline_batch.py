"""SPD with several requests in flight: the stated rules (per-request verify, per-request flush, stage capacity)
seen through what a run commits."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sim_scenarios import ideal

from spdsim.engine.run import simulate


def _batch(alpha, batch, *, stages=4, new_tokens=400):
    """``batch`` requests sent at once into a batch of ``batch``, constant latencies (cycle cost independent of
    the batch), own-GPU drafter."""
    scenario = ideal("spd", alpha, stages, new_tokens=new_tokens, requests=batch)
    return replace(
        scenario,
        workload=replace(scenario.workload, arrival="closed", max_concurrency=batch, max_batch=batch),
    )


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_saturated_requests_each_commit_one_token_per_cycle(batch):
    """alpha = 1: after the n-1 fill cycles every cycle verifies (and commits) one token of every request."""
    result = simulate(_batch(1.0, batch), record_intervals=False)
    assert result.iterations == 400 + 4 - 1  # fill, then one cycle per token, all requests together
    per_cycle = {}
    for token in result.tokens:
        per_cycle.setdefault(token.commit_ns, set()).add(token.request)
    assert all(len(requests) == batch for requests in per_cycle.values())


@pytest.mark.parametrize("batch", [1, 3])
def test_a_flush_refills_only_its_own_request(batch):
    """alpha = 0: every verification rejects, so each request commits one token per n cycles (its own fill after
    each flush) whatever the others do; with B requests the pipeline commits B tokens per n cycles."""
    stages = 4
    result = simulate(_batch(0.0, batch, stages=stages, new_tokens=50), record_intervals=False)
    assert result.iterations == 50 * stages
    assert len(result.tokens) == 50 * batch
    assert all(v.state == "refill" for v in result.verifications)


def test_other_requests_fill_a_refill_bubble():
    """Two requests in flight: stage n-1 works in cycles where one request refills (the other's tokens pass
    through it), so the batch keeps the last stage busier than one request alone."""

    def last_stage_busy_fraction(batch):
        result = simulate(_batch(0.6, batch, new_tokens=300), record_intervals=True)
        busy = dict(result.resource_busy_ns)["stage3"]
        return busy / result.end_ns

    assert last_stage_busy_fraction(2) > 1.2 * last_stage_busy_fraction(1)
