"""AR and draft-then-verify chains under continuous batching (docs/serving.md §3).

A step runs every prefilled request of the batch together: the drafter's passes over the batch (K serial passes
for draft-model / EAGLE-3 / MTP, one for DFlash / P-EAGLE; none for AR), then one target forward verifying K+1
rows of every request (plus a prefill chunk), then sampling. Costs come from the latency model's batch roofline
(``LatencyModel.batch_layers_ns``): weights are read once per step, each request's KV cache once, FLOPs grow
with every row, so a step is memory-bound below the ridge point and compute-bound above. Each request draws its
own accepted count from its own stream (per-request verify) and commits accepted + 1 tokens.
"""

from __future__ import annotations

from spdsim.engine.batching import Sequence, serve_batched
from spdsim.engine.result import BUSY, COMM, DRAFT
from spdsim.latency.model import RooflineLatency
from spdsim.methods.common import (
    chain_head,
    chain_pass_at,
    gpu_resources,
    parallel_block,
    parallel_pass_at,
    serial_overheads_ns,
    target_layers,
)


class ChainDecoder:
    """Batched AR (``drafted = 0``) or draft-then-verify step of one method."""

    def __init__(self, context):
        scenario = context.scenario
        method = scenario.method
        self.context = context
        self.latency = context.latency
        self.name = method.name
        self.tp = max(method.tensor_parallel, 1)
        self.resources = gpu_resources(method.tensor_parallel)
        self.drafted = 0 if method.name == "ar" else method.draft_tokens
        self.passes = {"ar": 0, "dflash": 1, "peagle": 1}.get(method.name, self.drafted)
        self.control_ns, self.serial_ns = serial_overheads_ns(scenario, self.latency, with_verify=True)
        if method.name == "ar":
            self.serial_ns += self.latency.cycle_fixed_ns(1)

    def join(self, seq: Sequence) -> None:
        if self.drafted:
            acceptance = seq.context.acceptance
            seq.state = acceptance.stream(seq.streams.acceptance, seq.spec.index, self.drafted)

    def draft_pass_ns(self, batch: int, kv_sum: int, kv_max: int) -> int:
        """One drafter pass over the batch (batch roofline; other latency kinds: the single-request batch-1 pass
        at the longest context, as their drafter costs carry no batch coordinate).

        The roofline prices the same drafters as the single-request pass (``chain_head``, ``parallel_block``,
        ``MethodSpec.draft_model_layers``), but over the batch: every request's rows and KV lengths at once."""
        latency, scenario = self.latency, self.context.scenario
        method = scenario.method
        if not isinstance(latency, RooflineLatency):
            if self.name in ("dflash", "peagle"):
                return int(parallel_pass_at(scenario, latency, kv_max))
            return int(chain_pass_at(scenario, latency, kv_max))
        if self.name in ("draft-model", "specdecpp"):
            layers = method.draft_model_layers(target_layers(scenario))
            body = latency.batch_sums_ns(layers, batch, batch, kv_sum, kv_sum)
            return latency.embed_ns(batch) + body + latency.head_ns(batch)
        if self.name in ("dflash", "peagle"):
            rows, vocab = parallel_block(method)
            body = latency.batch_sums_ns(method.draft_layers, batch * rows, batch, kv_sum, rows * kv_sum)
            return body + latency.lm_head_ns(batch * rows, vocab)
        layers, vocab = chain_head(method)
        return latency.batch_sums_ns(layers, batch, batch, kv_sum, kv_sum) + latency.lm_head_ns(batch, vocab)

    def step(self, start_ns: int, seqs: list[Sequence], chunk_rows: int, chunk_kv: int, index: int) -> int:
        kvs = [seq.kv for seq in seqs]
        batch, kv_sum, width = len(seqs), sum(kvs), self.drafted + 1
        jitter = seqs[0].streams.jitter
        draft = jitter.apply(self.draft_pass_ns(batch, kv_sum, max(kvs))) if self.passes else 0
        verify = jitter.apply(
            self.latency.batch_target_sums_ns(
                batch * width + chunk_rows,
                batch + (1 if chunk_rows else 0),
                kv_sum + chunk_kv,
                width * kv_sum + chunk_rows * chunk_kv,
                self.tp,
            )
        )
        control, serial = jitter.apply(self.control_ns), jitter.apply(self.serial_ns)
        recorder = self.context.recorder
        first = self.resources[0]
        cursor = start_ns
        recorder.interval(first, cursor, cursor + control, COMM, "control", -1, index)
        cursor += control
        for _ in range(self.passes):
            recorder.interval(first, cursor, cursor + draft, DRAFT, "draft", -1, index)
            cursor += draft
        label = "forward" if self.name == "ar" else "verify"
        for resource in self.resources:
            recorder.interval(resource, cursor, cursor + verify, BUSY, label, -1, index)
        cursor += verify
        recorder.interval(first, cursor, cursor + serial, BUSY, "sample", -1, index)
        return control + self.passes * draft + verify + serial

    def finish(self, end_ns: int, seqs: list[Sequence], index: int) -> None:
        recorder = self.context.recorder
        for seq in seqs:
            request = seq.spec.index
            accepted = 0
            if self.drafted:
                accepted = seq.state.chain_accepted(self.drafted)
                recorder.verification(request, seq.iteration, end_ns, self.drafted, accepted, "chain")
            emit = min(accepted + 1, seq.spec.new_tokens - seq.committed)
            for offset in range(emit):
                recorder.commit(request, seq.committed + offset, end_ns, seq.iteration, offset < accepted)
            seq.committed += emit
            seq.iteration += 1


def serve_chain_batch(env, context, method, state, streams, count, context_for):
    """``Method.serve_batch`` of AR, the chains and parallel drafting."""
    yield from serve_batched(env, context, state, streams, count, context_for, ChainDecoder(context))
