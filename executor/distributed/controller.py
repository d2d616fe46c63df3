"""The controller rank: drafter (v11 PDM), verification and the schedule's bookkeeping (reference/spd.md §1.3, §6).

Per cycle it broadcasts the control word, drafts x̂_{t+1} from pre-step anchor features while the stages forward
(on its own stream; with ``colocated`` it also runs stage 0 itself), receives every stage's anchors and, when the
pipeline is saturated, the last stage's output, verifies the draft now at depth n−1, and decides: accept (the new
draft enters stage 0 next cycle) or reject (the target's token re-enters alone, the next control word carries the
crop length, n−1 refill cycles follow). The bookkeeping is that of the single-process schedule
(``executor.schedules.spd``), so outputs are the same token for token.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from executor.distributed.comm import (
    NO_CROP,
    OP_END_PROMPT,
    OP_GO,
    OP_PREFILL,
    OP_SHUTDOWN,
    Control,
    Link,
)
from executor.distributed.worker import StageRunner, stage_anchors
from executor.schedules.base import cache_length, synthetic_drafts
from executor.schedules.common import (
    CycleTiming,
    DecodeOptions,
    PhaseTimer,
    PromptRecorder,
    PromptRun,
    Verifier,
    is_stop,
    make_streams,
    stream_context,
    used_on,
)
from executor.stages import StageSplit


@dataclass
class _InFlight:
    """What the controller knows of a token in the pipeline: id, position, anchors so far, its draft q."""

    token: int
    position: int
    feats: dict[int, torch.Tensor]
    draft_probs: torch.Tensor | None


class Controller:
    """Runs prompts through the distributed pipeline; ``local_stage`` is stage 0 when co-located."""

    def __init__(self, model, drafter, split: StageSplit, link: Link, local_stage: StageRunner | None):
        self.model, self.drafter, self.split, self.link = model, drafter, split, link
        self.n = split.num_stages
        self.roles = link.roles
        self.local_stage = local_stage
        self.anchors = [stage_anchors(drafter.anchor_indices, split, s) for s in range(self.n)]
        self.deepest = drafter.num_aggr_types - 1
        self.stage_stream, self.draft_stream = make_streams(model.device, 2)

    # -- helpers --------------------------------------------------------------------------------------------
    def _embed(self, token: int) -> torch.Tensor:
        return self.model.embed(torch.tensor([[token]], device=self.model.device))

    def _entry(self, token: int, position: int, probs=None) -> _InFlight:
        return _InFlight(token, position, {0: self._embed(token)}, probs)

    def _remote_stages(self, active: int) -> list[int]:
        return [s for s in range(active) if not (s == 0 and self.local_stage is not None)]

    def _recv_plan(self, active: int, tokens: int, saturated: bool):
        """Receive buffers for one cycle (or prefill): per remote stage [output if last] + [anchors]."""
        hidden = self.model.cfg.hidden_size
        device, dtype = self.model.device, self.model.dtype
        recvs, outputs, anchors = [], {}, {}
        for s in self._remote_stages(active):
            rank = self.roles.stage_rank(s)
            if s == self.n - 1 and saturated:
                outputs[s] = torch.empty(1, tokens, hidden, device=device, dtype=dtype)
                recvs.append((outputs[s], rank))
            if self.anchors[s]:
                anchors[s] = torch.empty(len(self.anchors[s]), 1, tokens, hidden, device=device, dtype=dtype)
                recvs.append((anchors[s], rank))
        return recvs, outputs, anchors

    def _unstack(self, stage: int, stacked: torch.Tensor) -> dict[int, torch.Tensor]:
        return {b: stacked[i] for i, b in enumerate(self.anchors[stage])}

    def _draft_logits(self, pipeline: list[_InFlight], pending: _InFlight | None, spec_cache) -> torch.Tensor:
        drafter, rows, positions = self.drafter, [], []
        if pending is not None:
            rows.append(drafter.project(self.deepest, pending.feats))
            positions.append(pending.position)
        for depth in reversed(range(len(pipeline))):
            entry = pipeline[depth]
            rows.append(drafter.project(drafter.aggr_of_depth[depth], entry.feats))
            positions.append(entry.position)
        position_t = torch.tensor(positions, device=rows[0].device)
        draft = drafter.decode(torch.cat(rows, dim=1), position_t, spec_cache, keep=int(pending is not None))
        return drafter.full_vocab_logits(draft[0])

    # -- one prompt -----------------------------------------------------------------------------------------
    def _prefill(self, tokens: list[int], cache_len: int):
        """Distributed prefill; returns (last-position logits [V], anchor features of the prompt)."""
        link, model = self.link, self.model
        control = Control(OP_PREFILL, prompt_len=len(tokens), cache_len=cache_len)
        link.broadcast_control(control)
        ids = torch.tensor(tokens, dtype=torch.int64, device=model.device)
        link.broadcast_ids(ids, len(tokens))
        feats = {0: model.embed(ids.view(1, -1))}
        sends = []
        if self.local_stage is not None:
            self.local_stage.begin(cache_len)
            sends, _, local_feats, out = self.local_stage.prefill(ids)
            feats.update(local_feats)
            if self.n == 1:
                sends = []
        link.exchange(sends, [])  # stage 1 receives before it sends: complete this send first
        link.flush_sends("prefill send of stage 0")
        recvs, outputs, anchors = self._recv_plan(self.n, len(tokens), saturated=True)
        link.wait_recvs(link.exchange([], recvs), "prefill outputs")
        for stage, stacked in anchors.items():
            feats.update(self._unstack(stage, stacked))
        last = outputs.get(self.n - 1, out if self.n == 1 else None)
        return model.head(last[:, -1:])[0, 0], feats

    def run_prompt(self, prompt, prompt_index: int, options: DecodeOptions, cache_len: int) -> PromptRun:
        model, drafter, link, n = self.model, self.drafter, self.link, self.n
        seed = options.prompt_seed(prompt_index)
        verifier = Verifier(options.temperature, seed, model.device)
        timer = PhaseTimer(model.device)
        tokens = list(prompt.tokens)
        synthetic = synthetic_drafts(model, tokens, options, seed, lookahead=n + 1)
        # One head capacity for the whole run (the stages' cache length): the heads attend over the capacity,
        # so a per-prompt capacity meant new attention shapes, and one-time costs, in every prompt.
        spec_cache = drafter.new_cache(capacity=max(cache_len, len(tokens) + options.max_new_tokens + n + 8))
        record = PromptRecorder(prompt.prompt_id, len(tokens), "spd")
        logits, feats = self._prefill(tokens, cache_len)
        prompt_positions = torch.arange(len(tokens), device=model.device)
        drafter.decode(drafter.project(self.deepest, feats), prompt_positions, spec_cache, keep=len(tokens))
        first, probs = verifier.sample(logits)
        record.commit(first)
        pipeline = [self._entry(first, len(tokens), probs)]
        pending: _InFlight | None = None
        first_after_refill = True
        crop = NO_CROP
        local_out = None
        host: dict[int, dict[str, float]] = {}
        while len(record.tokens) < options.max_new_tokens and not is_stop(record.tokens[-1], options):
            cycle = len(record.cycles)
            t_start = time.perf_counter()
            saturated = len(pipeline) == n
            state = "saturated" if saturated else ("fill" if record.verifications == 0 else "refill")
            newest = pipeline[0]
            control = Control(OP_GO, cycle, len(pipeline), crop, newest.token, newest.position)
            link.broadcast_control(control)
            crop = NO_CROP
            t_control = time.perf_counter()
            link.flush_sends("send of stage 0")
            sends, local = [], {}
            self._fork()
            if self.local_stage is not None:
                with timer.phase(cycle, "stage0", self.stage_stream), stream_context(self.stage_stream):
                    sends, _, local, local_out = self.local_stage.cycle(control)
            with timer.phase(cycle, "draft", self.draft_stream), stream_context(self.draft_stream):
                for entry in (*pipeline, *([pending] if pending is not None else [])):
                    used_on(self.draft_stream, *entry.feats.values())
                draft_logits = self._draft_logits(pipeline, pending, spec_cache)
            recvs, outputs, anchors = self._recv_plan(len(pipeline), 1, saturated)
            with stream_context(self.stage_stream):
                handles = link.exchange(sends, recvs)
            new_position = newest.position + 1
            with stream_context(self.draft_stream):
                new_token, new_probs = verifier.sample(draft_logits)
            if synthetic is not None:
                new_token = synthetic.replace(new_position)
            t_drafted = time.perf_counter()
            link.wait_recvs(handles, f"stage outputs of cycle {cycle}")
            t_received = time.perf_counter()
            self._join()
            for depth, entry in enumerate(pipeline):
                got = local if depth == 0 and self.local_stage is not None else None
                if got is None and depth in anchors:
                    got = self._unstack(depth, anchors[depth])
                entry.feats.update(got or {})
            new_entry = self._entry(new_token, new_position, new_probs)
            emitted = 0
            if saturated:
                exiting = pipeline[-1]
                candidate = pipeline[-2] if n >= 2 else new_entry
                exit_hidden = outputs.get(n - 1, local_out)
                with timer.phase(cycle, "verify"):
                    target_logits = model.head(exit_hidden)[0, 0]
                    accepted, token = verifier.check(target_logits, candidate.token, candidate.draft_probs)
                verify_state = "refill" if first_after_refill else "saturated"
                record.log_verification(
                    [(candidate.position, 1, candidate.token, token, int(accepted))], verify_state, n
                )
                record.commit(token, cycle, accepted)
                emitted = 1
                pending = exiting
                if accepted:
                    first_after_refill = False
                    pipeline = [new_entry, *pipeline[:-1]]
                else:
                    first_after_refill = True
                    pipeline = [self._entry(token, candidate.position)]
                    crop = candidate.position
            else:
                pending = None
                pipeline = [new_entry, *pipeline]
            record.cycles.append((cycle, state, emitted))
            t_end = time.perf_counter()
            host[cycle] = {
                "control": (t_control - t_start) * 1e6,
                "issue": (t_drafted - t_control) * 1e6,
                "wait": (t_received - t_drafted) * 1e6,
                "decide": (t_end - t_received) * 1e6,
                "cycle": (t_end - t_start) * 1e6,
            }
        return self._finish(record, timer, host)

    def _finish(self, record: PromptRecorder, timer: PhaseTimer, host: dict) -> PromptRun:
        """END_PROMPT: collect every remote stage's per-cycle forward times and merge them into the cycles."""
        link, cycles = self.link, len(record.cycles)
        link.broadcast_control(Control(OP_END_PROMPT, cycle=cycles))
        link.flush_sends("send of stage 0")
        remote = [s for s in range(self.n) if not (s == 0 and self.local_stage is not None)]
        buffers = {s: torch.empty(cycles, dtype=torch.float64, device=link.device) for s in remote}
        handles = link.exchange([], [(buffers[s], self.roles.stage_rank(s)) for s in remote])
        link.wait_recvs(handles, "per-cycle stage timings")
        run = record.freeze(timer)
        forward = {s: buffers[s].cpu().tolist() for s in remote}
        merged = []
        for timing in run.cycles:
            phases = {**timing.phases_us, **host.get(timing.index, {})}
            for s, values in forward.items():
                if values[timing.index] == values[timing.index]:  # not NaN: the stage held a token
                    phases[f"stage{s}"] = values[timing.index]
            merged.append(CycleTiming(timing.index, timing.state, timing.tokens, phases))
        return dataclasses.replace(run, cycles=tuple(merged))

    def shutdown(self) -> None:
        self.link.broadcast_control(Control(OP_SHUTDOWN))
        self.link.flush_sends("send before shutdown")

    def _fork(self) -> None:
        if self.model.device.type != "cuda":
            return
        current = torch.cuda.current_stream()
        for stream in (self.stage_stream, self.draft_stream):
            stream.wait_stream(current)

    def _join(self) -> None:
        if self.model.device.type != "cuda":
            return
        current = torch.cuda.current_stream()
        for stream in (self.stage_stream, self.draft_stream):
            current.wait_stream(stream)


def run_cache_length(model, prompts, options: DecodeOptions, num_stages: int) -> int:
    """One KV length for every prompt of a run (stage graphs are captured once against one cache)."""
    return max(cache_length(model, len(p.tokens), options, lookahead=num_stages + 1) for p in prompts)
