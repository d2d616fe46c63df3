"""SPD / PPSD with several requests in flight (docs/serving.md §4).

Rules (stated once here and tested in tests/test_methods_pipeline_batch.py):

* every request in the batch keeps its own speculative chain: up to n of its tokens in flight, one per stage;
* stage capacity per cycle: a stage forwards, in one batched call, the token of every request that has one at
  its depth (at most ``max_batch``); the cycle waits for the slowest stage or the drafter, as in the one-request
  cycle; the drafter drafts for every request in one call;
* per-request verify: each request whose chain is full (n tokens in flight) has its oldest token verified in the
  cycle; the verifications of a cycle share one lm_head call over their rows;
* per-request flush: a rejection flushes that request's chain only; it re-enters at stage 0 the next cycle and
  refills over n-1 cycles while the other requests' tokens keep the deeper stages busy — one request's refill
  bubble is filled by another's work. A cycle with a flush pays the KV crop / discard (``reject_ns``) once;
* a request joins at stage 0 after its prefill, which stalls the pipeline (no chunked prefill here).

Costs come from the batch roofline (``LatencyModel.batch_layers_ns``); the drafter over B requests is priced as
one call over B(n+1) rows against all their cached positions. Topology, jitter and the calibrated stage-0
overlap of the one-request cycle are not applied here (a co-located drafter runs after stage 0's forward).
"""

from __future__ import annotations

from spdsim.engine.batching import Sequence, serve_batched
from spdsim.engine.result import BUSY, COMM, DRAFT
from spdsim.methods.common import serial_overheads_ns, stage_layer_counts


class PipelineDecoder:
    """One SPD/PPSD cycle over every request in flight."""

    def __init__(self, context):
        scenario = context.scenario
        method = scenario.method
        self.context = context
        self.latency = context.latency
        self.counts = stage_layer_counts(scenario)
        self.stages = len(self.counts)
        self.tp = max(method.tensor_parallel, 1)
        self.spd = method.name == "spd"
        self.own_drafter = self.spd and method.drafter_placement == "own-gpu"
        overheads = scenario.overheads
        control, fixed = serial_overheads_ns(scenario, self.latency, with_verify=False)
        self.control_ns = control
        self.fixed_ns = fixed + self.latency.cycle_fixed_ns(self.stages)
        self.verify_fixed_ns = overheads.sampling_ns + self.latency.verify_fixed_ns(self.stages)
        self.gather_ns = overheads.gather_ns if self.spd else 0
        self.p2p_ns = overheads.p2p_ns
        self.contention = overheads.drafter_contention
        self.reject_ns = scenario.hardware.crop_ns if scenario.hardware is not None else 0
        self.resources = tuple(f"stage{s}" for s in range(self.stages))
        self._outcomes: dict[int, bool] = {}

    def join(self, seq: Sequence) -> None:
        stream = seq.context.acceptance.stream(seq.streams.acceptance, seq.spec.index, 1)
        seq.state = [1, True, stream]  # tokens in flight, next verification follows a fill/refill, stream

    def _drafter_ns(self, batch: int, kv_sum: int) -> int:
        if self.spd:
            spec_layers = self.context.scenario.method.spec_layers
            return int(self.latency.pdm_ns(spec_layers, (self.stages + 1) * batch, kv_sum))
        return int(self.latency.head_ns(batch))  # PPSD: the early-exit head after stage 0's layers

    def step(self, start_ns: int, seqs: list[Sequence], chunk_rows: int, chunk_kv: int, index: int) -> int:
        latency, n = self.latency, self.stages
        count_at = [0] * (n + 1)  # requests by tokens in flight
        kv_at = [0] * (n + 1)
        for seq in seqs:
            depth = seq.state[0]
            count_at[depth] += 1
            kv_at[depth] += seq.kv
        members = []
        count = kv_sum = 0
        holding = []
        for s in range(n, 0, -1):  # stage s-1 holds a token of every request with more than s-1 in flight
            count += count_at[s]
            kv_sum += kv_at[s]
            holding.append((count, kv_sum))
        holding.reverse()
        for s, (count, kv_sum) in enumerate(holding):
            if not count:
                members.append((0, 0))
                continue
            forward = latency.batch_sums_ns(self.counts[s], count, count, kv_sum, kv_sum, self.tp)
            if s == 0:
                forward += latency.embed_ns(count)
            send = latency.p2p_ns(latency.hidden_bytes(count)) + self.p2p_ns
            members.append((forward, send))
        drafter = self._drafter_ns(len(seqs), holding[0][1])
        forward0, send0 = members[0]
        if not self.own_drafter:  # the drafter shares stage 0's GPU, after its forward
            forward0 = round(forward0 * self.contention)
            drafter = round(drafter * self.contention) + self.gather_ns
            members[0] = (forward0, send0)
        slowest = max(f + t for f, t in members)
        stage0_total = members[0][0] + members[0][1] + (0 if self.own_drafter else drafter)
        slowest = max(slowest, stage0_total, self.gather_ns + drafter if self.own_drafter else 0)
        exits = [seq for seq in seqs if seq.state[0] == n]
        verify = latency.head_ns(len(exits)) + self.verify_fixed_ns if exits else 0
        # outcomes are drawn now (they do not depend on timing) so that a flush's crop is priced in this cycle
        self._outcomes = {id(seq): bool(seq.state[2].spd_accept(seq.state[1])) for seq in exits}
        flushes = [
            seq for seq in exits if not self._outcomes[id(seq)] and seq.committed + 1 < seq.spec.new_tokens
        ]
        reject = self.reject_ns if flushes else 0
        self._record(start_ns, members, drafter, slowest, verify, reject, index)
        return self.control_ns + slowest + verify + self.fixed_ns + reject

    def _record(self, start, members, drafter, slowest, verify, reject, index) -> None:
        interval = self.context.recorder.interval
        interval("controller", start, start + self.control_ns, COMM, "control", -1, index)
        begin = start + self.control_ns
        for s, (forward, send) in enumerate(members):
            interval(f"stage{s}", begin, begin + forward, BUSY, "forward", -1, index)
            cursor = begin + forward
            if s == 0 and not self.own_drafter:
                interval("stage0", cursor, cursor + drafter, DRAFT, "draft", -1, index)
                cursor += drafter
            interval(f"stage{s}", cursor, cursor + send, COMM, "send", -1, index)
        if self.own_drafter:
            interval("drafter", begin, begin + self.gather_ns, COMM, "gather", -1, index)
            interval(
                "drafter", begin + self.gather_ns, begin + self.gather_ns + drafter, DRAFT, "pdm", -1, index
            )
        end = begin + slowest
        interval("controller", end, end + verify, BUSY, "verify", -1, index)
        end += verify
        interval("controller", end, end + self.fixed_ns, COMM, "sync", -1, index)
        end += self.fixed_ns
        interval("controller", end, end + reject, COMM, "discard", -1, index)

    def finish(self, end_ns: int, seqs: list[Sequence], index: int) -> None:
        recorder = self.context.recorder
        n = self.stages
        for seq in seqs:
            state = seq.state
            request = seq.spec.index
            if state[0] < n:
                state[0] += 1
            else:
                accepted = self._outcomes[id(seq)]
                recorder.verification(
                    request, seq.iteration, end_ns, 1, int(accepted), "refill" if state[1] else "saturated"
                )
                recorder.commit(request, seq.committed, end_ns, seq.iteration, accepted)
                seq.committed += 1
                state[1] = not accepted
                if not accepted:
                    state[0] = 1
            seq.iteration += 1


def serve_pipeline_batch(env, context, method, state, streams, count, context_for):
    """``Method.serve_batch`` of SPD and PPSD."""
    decoder = PipelineDecoder(context)
    yield from serve_batched(env, context, state, streams, count, context_for, decoder, chunked=False)
