"""Serial chain speculative decoding: K draft passes, then one target verify of K+1 tokens (docs/baselines.md F2).

``draft-model`` is a separate smaller LM (Leviathan), ``eagle3`` a one-layer head with its own lm_head,
``mtp`` one multi-token-prediction layer reused K times. The same loop serves parallel drafting (one pass).
"""

from __future__ import annotations

from spdsim.engine.result import COMM, DRAFT
from spdsim.methods import Method
from spdsim.methods.batched import serve_chain_batch
from spdsim.methods.common import (
    VerifyTable,
    chain_pass_at,
    gpu_resources,
    kv_lengths,
    record_serial_iteration,
    serial_overheads_ns,
    verify_and_commit,
)


def chain_draft_pass_ns(scenario, latency) -> list[int]:
    """One serial draft pass per committed count, for draft-model / eagle3 / mtp (and specdecpp's draft LM)."""
    return chain_pass_at(scenario, latency, kv_lengths(scenario)).tolist()


def run_draft_verify(env, context, request, streams, pass_ns, passes, drafted):
    """Draft-then-verify loop: ``passes`` drafter passes of ``pass_ns[c]``, verify of ``drafted``+1 tokens."""
    scenario = context.scenario
    recorder = context.recorder
    jitter = streams.jitter
    stream = context.acceptance.stream(streams.acceptance, request, drafted)
    verify_ns = VerifyTable(scenario, context.latency)(drafted + 1)
    control_ns, serial_ns = serial_overheads_ns(scenario, context.latency, with_verify=True)
    resources = gpu_resources(scenario.method.tensor_parallel)
    new_tokens = scenario.workload.new_tokens
    committed = 0
    iteration = 0
    while committed < new_tokens:
        start = int(env.now)
        control = jitter.apply(control_ns)
        draft_spans = [jitter.apply(pass_ns[committed]) for _ in range(passes)]
        verify = jitter.apply(verify_ns[committed])
        serial = jitter.apply(serial_ns)
        yield env.timeout(control + sum(draft_spans) + verify + serial)
        if recorder.record_intervals:
            spans = [(COMM, "control", control)] + [(DRAFT, "draft", span) for span in draft_spans]
            record_serial_iteration(recorder, resources, start, spans, verify, serial, request, iteration)
        committed = verify_and_commit(
            recorder, stream, request, iteration, int(env.now), drafted, committed, new_tokens
        )
        iteration += 1
    recorder.iterations += iteration


def run_request(env, context, request, streams):
    draft_tokens = context.scenario.method.draft_tokens
    pass_ns = chain_draft_pass_ns(context.scenario, context.latency)
    yield from run_draft_verify(env, context, request, streams, pass_ns, draft_tokens, draft_tokens)


def _tp_gpus(scenario) -> int:
    return max(scenario.method.tensor_parallel, 1)


METHODS = (
    Method(
        "draft-model",
        "classic SD (Leviathan): a smaller LM drafts K tokens serially, the target verifies K+1",
        "chain",
        _tp_gpus,
        run_request,
        serve_chain_batch,
    ),
    Method(
        "eagle3",
        "EAGLE-3 chain (vLLM): a one-layer head over fused target features drafts K tokens serially",
        "chain",
        _tp_gpus,
        run_request,
        serve_chain_batch,
    ),
    Method(
        "mtp",
        "multi-token prediction: one MTP layer reused K times, then verify K+1",
        "chain",
        _tp_gpus,
        run_request,
        serve_chain_batch,
    ),
)
