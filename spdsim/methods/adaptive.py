"""Adaptive chains: SpecDec++ (stop drafting when an acceptance head predicts a likely rejection) and the
``cascade`` little -> draft -> target hierarchy (docs/baselines.md §3, §3.2, F7).

The acceptance head is modelled, not learned: p̂_k = sigmoid(logit(a_k) + N(0, head_noise)), with a_k the true
conditional acceptance. As coded in SpecDec++, the first draft's p̂ is 1 ("skip the first round"); stop after
draft k when 1 - Π p̂ > h, never before k_min, always at k_max. The head's own cost is neglected (one
H x H residual block on the drafter's hidden state). The noise is independent of the outcome, so the stop
length and the accepted count are independent given a_k; that is what the closed form uses.
"""

from __future__ import annotations

import math

from spdsim.engine.result import COMM, DRAFT
from spdsim.methods import Method
from spdsim.methods.chain import chain_draft_pass_ns
from spdsim.methods.common import (
    VerifyTable,
    gpu_resources,
    kv_lengths,
    record_serial_iteration,
    serial_overheads_ns,
    target_layers,
    verify_and_commit,
)
from spdsim.scenario.acceptance import logit

_CHUNK = 1024


def stop_length(
    logits: list[float], noise: list[float], sigma: float, h: float, k_min: int, k_max: int
) -> int:
    """SpecDec++ stopping rule on one draw of head noise (``noise[k-1]`` for draft k)."""
    cumulative = 1.0
    for k in range(1, k_max + 1):
        if k > 1:
            cumulative *= 1.0 / (1.0 + math.exp(-(logits[k - 1] + sigma * noise[k - 1])))
        if k >= k_min and 1.0 - cumulative > h:
            return k
    return k_max


class _Draws:
    """Prefetched standard normals (rows of k_max) and uniforms from one generator."""

    def __init__(self, rng, width: int):
        self._rng = rng
        self._width = width
        self._normals: list[list[float]] = []
        self._uniforms: list[float] = []

    def normals(self) -> list[float]:
        if not self._normals:
            self._normals = self._rng.standard_normal((_CHUNK, self._width)).tolist()
        return self._normals.pop()

    def uniform(self) -> float:
        if not self._uniforms:
            self._uniforms = self._rng.random(_CHUNK).tolist()
        return self._uniforms.pop()


def _bounds(scenario) -> tuple[int, int]:
    method = scenario.method
    k_max = max(method.k_max, 1)
    return min(max(method.k_min, 1), k_max), k_max


def run_specdecpp(env, context, request, streams):
    scenario = context.scenario
    k_min, k_max = _bounds(scenario)
    h = scenario.method.stop_threshold
    sigma = scenario.acceptance.head_noise
    logits = [logit(context.acceptance.conditional(k)) for k in range(1, k_max + 1)]
    pass_ns = chain_draft_pass_ns(scenario, context.latency)
    verify_table = VerifyTable(scenario, context.latency)
    control_ns, serial_ns = serial_overheads_ns(scenario, context.latency, with_verify=True)
    stream = context.acceptance.stream(streams.acceptance, request, k_max)
    draws = _Draws(streams.policy, k_max)
    recorder = context.recorder
    jitter = streams.jitter
    resources = gpu_resources(scenario.method.tensor_parallel)
    new_tokens = scenario.workload.new_tokens
    committed = iteration = 0
    while committed < new_tokens:
        drafted = stop_length(logits, draws.normals(), sigma, h, k_min, k_max)
        start = int(env.now)
        control = jitter.apply(control_ns)
        drafts = [jitter.apply(pass_ns[committed]) for _ in range(drafted)]
        verify = jitter.apply(verify_table(drafted + 1)[committed])
        serial = jitter.apply(serial_ns)
        yield env.timeout(control + sum(drafts) + verify + serial)
        if recorder.record_intervals:
            spans = [(COMM, "control", control)] + [(DRAFT, "draft", d) for d in drafts]
            record_serial_iteration(recorder, resources, start, spans, verify, serial, request, iteration)
        committed = verify_and_commit(
            recorder, stream, request, iteration, int(env.now), drafted, committed, new_tokens
        )
        iteration += 1
    recorder.iterations += iteration


def run_cascade(env, context, request, streams):
    scenario = context.scenario
    k_min, k_max = _bounds(scenario)
    h = scenario.method.stop_threshold
    sigma = scenario.acceptance.head_noise
    inner_alpha = scenario.acceptance.inner_alpha
    outer_logits = [logit(context.acceptance.conditional(k)) for k in range(1, k_max + 1)]
    inner_logits = [logit(inner_alpha)] * k_max
    inner_survival = [-(inner_alpha**k) for k in range(1, k_max + 1)]
    kv = kv_lengths(scenario)
    little_ns = context.latency.little_model_ns(scenario.method.draft_layers, 1, kv).tolist()
    middle_layers = scenario.method.cascade_draft_layers(target_layers(scenario))
    middle_verify = {}
    verify_table = VerifyTable(scenario, context.latency)
    control_ns, serial_ns = serial_overheads_ns(scenario, context.latency, with_verify=True)
    stream = context.acceptance.stream(streams.acceptance, request, k_max)
    outer_draws = _Draws(streams.policy, k_max)
    inner_draws = _Draws(streams.inner, k_max)
    recorder = context.recorder
    jitter = streams.jitter
    resources = gpu_resources(scenario.method.tensor_parallel)
    new_tokens = scenario.workload.new_tokens
    committed = iteration = 0
    while committed < new_tokens:
        drafted = stop_length(outer_logits, outer_draws.normals(), sigma, h, k_min, k_max)
        spans = [(COMM, "control", jitter.apply(control_ns))]
        produced = 0
        while produced < drafted:
            inner_k = stop_length(inner_logits, inner_draws.normals(), sigma, h, k_min, k_max)
            if inner_k not in middle_verify:
                middle_verify[inner_k] = context.latency.draft_model_ns(
                    middle_layers, inner_k + 1, kv
                ).tolist()
            spans += [(DRAFT, "little", jitter.apply(little_ns[committed])) for _ in range(inner_k)]
            spans.append((DRAFT, "draft-verify", jitter.apply(middle_verify[inner_k][committed])))
            inner_accepted = _count_below(inner_survival, inner_draws.uniform(), inner_k)
            produced += inner_accepted + 1
        start = int(env.now)
        verify = jitter.apply(verify_table(drafted + 1)[committed])
        serial = jitter.apply(serial_ns)
        yield env.timeout(sum(span for _, _, span in spans) + verify + serial)
        if recorder.record_intervals:
            record_serial_iteration(recorder, resources, start, spans, verify, serial, request, iteration)
        committed = verify_and_commit(
            recorder, stream, request, iteration, int(env.now), drafted, committed, new_tokens
        )
        iteration += 1
    recorder.iterations += iteration


def _count_below(neg_survival: list[float], uniform: float, limit: int) -> int:
    accepted = 0
    while accepted < limit and -neg_survival[accepted] > uniform:
        accepted += 1
    return accepted


def _tp_gpus(scenario) -> int:
    return max(scenario.method.tensor_parallel, 1)


METHODS = (
    Method(
        "specdecpp",
        "SpecDec++: a draft LM drafts until an acceptance head predicts a rejection (1 - Πp̂ > h), k in [k_min, k_max]",
        "adaptive",
        _tp_gpus,
        run_specdecpp,
    ),
    Method(
        "cascade",
        "little -> draft -> target: an inner SD loop makes the draft model's tokens, SpecDec++ stopping on each edge",
        "adaptive",
        _tp_gpus,
        run_cascade,
    ),
)
