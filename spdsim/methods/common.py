"""Cost helpers shared by the schedules and the closed forms (so both price an iteration identically)."""

from __future__ import annotations

import numpy as np

from spdsim.config import Scenario
from spdsim.latency import LatencyModel


def kv_lengths(scenario: Scenario) -> np.ndarray:
    """Context length seen by an iteration that starts after ``c`` committed tokens, for c = 0..N."""
    workload = scenario.workload
    return np.arange(workload.new_tokens + 1, dtype=np.int64) + workload.prompt_tokens


def gpu_resources(tp: int) -> tuple[str, ...]:
    return tuple(f"gpu{i}" for i in range(max(tp, 1)))


def serial_overheads_ns(scenario: Scenario, latency: LatencyModel, with_verify: bool) -> tuple[int, int]:
    """(control before the iteration, serial costs after it): sampling (if verified) + fixed per-cycle."""
    overheads = scenario.overheads
    after = overheads.fixed_cycle_ns + latency.cycle_fixed_ns(scenario.method.num_stages)
    if with_verify:
        after += overheads.sampling_ns
    return overheads.control_ns, after


def target_verify_ns(scenario: Scenario, latency: LatencyModel, query_tokens: int) -> np.ndarray:
    """Target forward over ``query_tokens`` query tokens (with tensor parallelism), per committed count."""
    return latency.target_ns(query_tokens, kv_lengths(scenario), scenario.method.tensor_parallel)


def draft_model_layers(scenario: Scenario) -> int:
    """Layers of a classic draft model: a fraction of the target, or ``draft_layers`` of its shape."""
    method = scenario.method
    if method.draft_model_layers_fraction > 0 and scenario.model is not None:
        return max(1, round(method.draft_model_layers_fraction * scenario.model.num_layers))
    return method.draft_layers


class VerifyTable:
    """Target verify cost per query-token count, computed on first use (adaptive K asks for several)."""

    def __init__(self, scenario: Scenario, latency: LatencyModel):
        self._scenario = scenario
        self._latency = latency
        self._by_query: dict[int, list[int]] = {}

    def __call__(self, query_tokens: int) -> list[int]:
        table = self._by_query.get(query_tokens)
        if table is None:
            table = target_verify_ns(self._scenario, self._latency, query_tokens).tolist()
            self._by_query[query_tokens] = table
        return table
