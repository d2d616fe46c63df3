"""Cost helpers shared by the schedules and the closed forms (so both price an iteration identically)."""

from __future__ import annotations

from typing import Any

import numpy as np

from spdsim.engine.result import BUSY
from spdsim.errors import SpdsimError
from spdsim.latency.model import KvLen, LatencyModel
from spdsim.scenario.config import PIPELINE_METHODS, MethodSpec, Scenario


def kv_lengths(scenario: Scenario) -> np.ndarray:
    """Context length seen by an iteration that starts after ``c`` committed tokens, for c = 0..N."""
    workload = scenario.workload
    return np.arange(workload.new_tokens + 1, dtype=np.int64) + workload.prompt_tokens


def gpu_resources(tp: int) -> tuple[str, ...]:
    return tuple(f"gpu{i}" for i in range(max(tp, 1)))


def serial_overheads_ns(scenario: Scenario, latency: LatencyModel, with_verify: bool) -> tuple[int, int]:
    """(control before the iteration, serial costs after it): sampling (if verified) + fixed per-cycle, and for a
    draft-then-verify method the profile's measured ``chain_fixed`` at its K (0 without one)."""
    overheads = scenario.overheads
    after = overheads.fixed_cycle_ns
    if with_verify:
        after += overheads.sampling_ns
        method = scenario.method
        if method.name != "ar" and method.name not in PIPELINE_METHODS:
            after += latency.chain_fixed_ns(method.draft_tokens)
    return overheads.control_ns, after


def target_verify_ns(scenario: Scenario, latency: LatencyModel, query_tokens: int) -> np.ndarray:
    """Target forward over ``query_tokens`` query tokens (with tensor parallelism), per committed count."""
    return latency.target_ns(query_tokens, kv_lengths(scenario), scenario.method.tensor_parallel)


def target_layers(scenario: Scenario) -> int | None:
    """The target's layer count (None without a model shape): what ``MethodSpec.draft_model_layers`` and
    ``MethodSpec.cascade_draft_layers`` size their drafters from."""
    return scenario.model.num_layers if scenario.model is not None else None


def chain_head(method: MethodSpec) -> tuple[int, int | None]:
    """(layers, lm_head vocabulary) of a head-style chain drafter: MTP is one layer reused, on the verifier's own
    lm_head (0: the target's vocabulary); EAGLE-3 is ``draft_layers`` with the draft vocabulary (None)."""
    return (1, 0) if method.name == "mtp" else (method.draft_layers, None)


def parallel_block(method: MethodSpec) -> tuple[int, int | None]:
    """(query rows, lm_head vocabulary) of one parallel-drafting pass: DFlash's bonus + K mask rows through the
    target's lm_head (0), P-EAGLE's K slots with EAGLE-3's draft vocabulary (None)."""
    if method.name == "dflash":
        return method.draft_tokens + 1, 0
    return method.draft_tokens, None


def chain_pass_at(scenario: Scenario, latency: LatencyModel, kv: KvLen) -> Any:
    """One batch-1 serial drafter pass (draft-model / SpecDec++'s draft LM / EAGLE-3 / MTP) at context ``kv``
    (an array of lengths or one): the single-request schedules and the batched one's non-roofline fallback."""
    method = scenario.method
    if method.name in ("draft-model", "specdecpp"):
        return latency.draft_model_ns(method.draft_model_layers(target_layers(scenario)), 1, kv)
    layers, vocab = chain_head(method)
    return latency.chain_draft_ns(layers, kv, vocab)


def parallel_pass_at(scenario: Scenario, latency: LatencyModel, kv: KvLen) -> Any:
    """One batch-1 parallel-drafting pass (DFlash / P-EAGLE) at context ``kv`` (an array of lengths or one)."""
    rows, vocab = parallel_block(scenario.method)
    return latency.parallel_draft_ns(scenario.method.draft_layers, rows, kv, vocab)


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


def record_serial_iteration(recorder, resources, start, spans, verify, serial, request, iteration):
    """Record a serial draft-then-verify iteration: ``spans`` (kind, label, ns) on the first GPU, then the
    verify on every tensor-parallel GPU, then sampling."""
    cursor = start
    for kind, label, span in spans:
        recorder.interval(resources[0], cursor, cursor + span, kind, label, request, iteration)
        cursor += span
    for resource in resources:
        recorder.interval(resource, cursor, cursor + verify, BUSY, "verify", request, iteration)
    cursor += verify
    recorder.interval(resources[0], cursor, cursor + serial, BUSY, "sample", request, iteration)


def verify_and_commit(recorder, stream, request, iteration, now, drafted, committed, new_tokens) -> int:
    """Draw the accepted count, record the verification and commit accepted + 1 tokens (capped at the
    request's length); returns the new committed count."""
    accepted = stream.chain_accepted(drafted)
    recorder.verification(request, iteration, now, drafted, accepted, "chain")
    emit = min(accepted + 1, new_tokens - committed)
    for offset in range(emit):
        recorder.commit(request, committed + offset, now, iteration, offset < accepted)
    return committed + emit


def stage_layer_counts(scenario) -> tuple[int, ...]:
    """Layers per stage: the explicit list, or an even split of L into n."""
    method = scenario.method
    if method.stage_layers:
        if scenario.model is not None and sum(method.stage_layers) != scenario.model.num_layers:
            raise SpdsimError(
                f"method.stage_layers: sums to {sum(method.stage_layers)}, the model has {scenario.model.num_layers} layers"
            )
        return tuple(method.stage_layers)
    if scenario.model is None:
        raise SpdsimError("scenario.model: SPD needs a model shape to split layers into stages")
    num_layers, stages = scenario.model.num_layers, method.num_stages
    if stages < 1 or num_layers % stages:
        raise SpdsimError(
            f"method.num_stages: {stages} does not divide the model's {num_layers} layers; give method.stage_layers"
        )
    return (num_layers // stages,) * stages
