"""Continuous batching: the server step loop shared by every batched schedule (docs/serving.md §3).

Each step the server (1) takes the requests sent since the last step into the waiting queue, (2) admits waiting
requests FCFS while fewer than ``max_batch`` run, (3) prefills: without chunking (``chunk_tokens = 0``) a step
that prefills every admitted, unprefilled request and runs no decode (decodes stall, as in vLLM's V0 scheduler);
with chunking, each decode step also carries up to ``chunk_tokens`` minus its decode rows of prompt tokens, the
oldest unprefilled request first (vLLM's chunked prefill), and (4) runs one decode step of the method's decoder
over every prefilled request. A request leaves the batch at its last token; its place is refilled next step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from spdsim.engine.arrivals import RequestSpec
from spdsim.engine.result import BUSY
from spdsim.engine.serving import prefill_cost_ns


@dataclass
class Sequence:
    """One request in the batch: its lengths, streams, progress and the decoder's per-request state."""

    spec: RequestSpec
    context: Any  # RunContext with this request's scenario
    streams: Any  # RequestStreams
    prefilled_tokens: int = 0
    prefilled: bool = False
    committed: int = 0
    iteration: int = 0
    state: Any = field(default=None)

    @property
    def kv(self) -> int:
        """Positions in its KV cache when its next decode step starts."""
        return self.spec.prompt_tokens + self.committed


class Decoder(Protocol):
    """A method's batched decode step."""

    resources: tuple[str, ...]

    def join(self, seq: Sequence) -> None:
        """Initialise a request's state when it enters the batch."""

    def step(self, start_ns: int, seqs: list[Sequence], chunk_rows: int, chunk_kv: int, index: int) -> int:
        """Price (and record) one step over ``seqs`` plus a prefill chunk of ``chunk_rows`` rows; its length."""
        ...

    def finish(self, end_ns: int, seqs: list[Sequence], index: int) -> None:
        """Verify and commit each sequence's tokens at the end of the step."""


def serve_batched(
    env, context, state, streams, count: int, context_for, decoder: Decoder, chunked: bool = True
):
    """The step loop (module docstring); ``chunked``: the decoder can carry prefill chunks."""
    workload = context.scenario.workload
    latency = context.latency
    tp = max(context.scenario.method.tensor_parallel, 1)
    chunk_tokens = workload.chunk_tokens if chunked else 0
    recorder = context.recorder
    waiting: deque[RequestSpec] = deque()
    running: list[Sequence] = []
    finished = step = decode_steps = 0
    while finished < count:
        waiting.extend(state.queue.items)
        state.queue.items.clear()
        if not running and not waiting:
            waiting.append((yield state.queue.get()))
            continue
        while waiting and len(running) < workload.max_batch:
            spec = waiting.popleft()
            seq = Sequence(spec, context_for(spec), streams[spec.index])
            decoder.join(seq)
            running.append(seq)
        unfilled = [seq for seq in running if not seq.prefilled]
        start = int(env.now)
        if unfilled and not chunk_tokens:
            if workload.prefill == "fixed":
                cost = sum(
                    prefill_cost_ns(s.context.scenario, latency, s.spec.prompt_tokens) for s in unfilled
                )
            else:
                prompts = [s.spec.prompt_tokens for s in unfilled]
                cost = latency.batch_target_ns(prompts, prompts, tp) if sum(prompts) else 0
            if cost:
                yield env.timeout(cost)
                for resource in decoder.resources:
                    recorder.interval(resource, start, start + cost, BUSY, "prefill", -1, step)
                recorder.step_members(step, [s.spec.index for s in unfilled])
            for seq in unfilled:
                seq.prefilled = True
                state.start_ns[seq.spec.index] = int(env.now)
            step += 1
            continue
        decoding = [seq for seq in running if seq.prefilled]
        chunk_rows = chunk_kv = 0
        chunk_owner = None
        if unfilled:
            chunk_owner = unfilled[0]
            budget = max(chunk_tokens - len(decoding), 1)
            chunk_rows = min(budget, chunk_owner.spec.prompt_tokens - chunk_owner.prefilled_tokens)
            chunk_kv = chunk_owner.prefilled_tokens + chunk_rows
        if not decoding and not chunk_rows:  # an empty prompt with chunking: nothing to prefill
            for seq in unfilled:
                seq.prefilled = True
                state.start_ns[seq.spec.index] = start
            continue
        duration = decoder.step(start, decoding, chunk_rows, chunk_kv, step) if decoding else 0
        members = [seq.spec.index for seq in decoding]
        recorder.step_members(step, members if chunk_owner is None else [*members, chunk_owner.spec.index])
        if not decoding:
            duration = latency.batch_target_ns([chunk_rows], [chunk_kv], tp)
            for resource in decoder.resources:
                recorder.interval(resource, start, start + duration, BUSY, "prefill", -1, step)
        yield env.timeout(duration)
        end = int(env.now)
        if decoding:
            decoder.finish(end, decoding, step)
            decode_steps += 1
        if chunk_owner is not None:
            chunk_owner.prefilled_tokens += chunk_rows
            if chunk_owner.prefilled_tokens >= chunk_owner.spec.prompt_tokens:
                chunk_owner.prefilled = True
                state.start_ns[chunk_owner.spec.index] = end
        for seq in decoding:
            if seq.committed >= seq.spec.new_tokens:
                running.remove(seq)
                state.finish(seq.spec.index)
                finished += 1
        step += 1
    recorder.iterations += decode_steps  # prefill-only steps are not decode iterations
