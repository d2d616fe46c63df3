"""The controller rank: drafter (v11 PDM), verification and the schedule's bookkeeping (docs/spd.md §1.3, §6).

Per cycle it broadcasts the control word, drafts x̂_{t+1} from pre-step anchor features while the stages forward
(on its own stream; with ``colocated`` it also runs stage 0 itself), receives every stage's anchors and, when the
pipeline is saturated, the last stage's output, verifies the draft now at depth n−1, and decides: accept (the new
draft enters stage 0 next cycle) or reject (the target's token re-enters alone, the next control word carries the
crop length, n−1 refill cycles follow). Drafting, the decision and the records are ``SpdPrompt`` of the
single-process schedule (``executor.schedules.spd``), so outputs are the same token for token; this module keeps the
communication, the control words and the host timing of each cycle.
"""

from __future__ import annotations

import dataclasses
import time

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
from executor.graphs import GraphCache
from executor.heads.fast_spd import FastSpdDrafter
from executor.schedules.base import cache_length
from executor.schedules.common import (
    CycleTiming,
    DecodeOptions,
    PhaseTimer,
    PromptRecorder,
    PromptRun,
    make_streams,
    stream_context,
)
from executor.schedules.spd import SpdPrompt, spec_capacity
from executor.stages import StageSplit


class Controller:
    """Runs prompts through the distributed pipeline; ``local_stage`` is stage 0 when co-located."""

    def __init__(
        self,
        model,
        drafter,
        split: StageSplit,
        link: Link,
        local_stage: StageRunner | None,
        use_graphs: bool = True,
        verify_on: str = "last-stage",
    ):
        self.model, self.drafter, self.split, self.link = model, drafter, split, link
        self.use_graphs = use_graphs
        # greedy jobs: the last stage verifies, only its (accepted, target, drafted) triple comes back
        self.verify_last = verify_on == "last-stage"
        self.n = split.num_stages
        self.roles = link.roles
        self.local_stage = local_stage
        self.anchors = [stage_anchors(drafter.anchor_indices, split, s) for s in range(self.n)]
        self.stage_stream, self.draft_stream = make_streams(model.device, 2)
        # The fast drafter (packed weights, spec cache, static buffers) and the graphs of its draft step and of
        # the verify (`SpdPrompt`'s, as in the single-process schedule), shared by the prompts; a larger
        # drafter (a job with a longer cache) gets a fresh GraphCache (graphs are bound to its buffers).
        self.fast: FastSpdDrafter | None = None
        self.graphs = GraphCache(enabled=use_graphs)
        self.cycle_syncs: list[tuple[tuple[str, int], ...]] = []  # per prompt: (state, host syncs) per cycle

    def _drafter_for(self, prompt, options: DecodeOptions, cache_len: int) -> FastSpdDrafter:
        capacity = max(cache_len, spec_capacity(len(prompt.tokens), options, self.n))
        if self.fast is None or self.fast.capacity < capacity:
            self.fast = FastSpdDrafter(self.drafter, self.model, capacity)
            self.graphs = GraphCache(enabled=self.use_graphs)
        return self.fast

    # -- helpers --------------------------------------------------------------------------------------------
    def _remote_stages(self, active: int) -> list[int]:
        return [s for s in range(active) if not (s == 0 and self.local_stage is not None)]

    def _recv_plan(self, active: int, tokens: int, saturated: bool, verified: bool = False):
        """Receive buffers for one cycle (or prefill): per remote stage [output if last] + [anchors]; the last
        stage's output is the packed int64 verify triple when it ``verified``."""
        hidden = self.model.cfg.hidden_size
        device, dtype = self.model.device, self.model.dtype
        recvs, outputs, anchors = [], {}, {}
        for s in self._remote_stages(active):
            rank = self.roles.stage_rank(s)
            if s == self.n - 1 and saturated:
                outputs[s] = (
                    torch.empty(3, dtype=torch.int64, device=device)
                    if verified
                    else torch.empty(1, tokens, hidden, device=device, dtype=dtype)
                )
                recvs.append((outputs[s], rank))
            if self.anchors[s]:
                anchors[s] = torch.empty(len(self.anchors[s]), 1, tokens, hidden, device=device, dtype=dtype)
                recvs.append((anchors[s], rank))
        return recvs, outputs, anchors

    def _unstack(self, stage: int, stacked: torch.Tensor) -> dict[int, torch.Tensor]:
        return {b: stacked[i] for i, b in enumerate(self.anchors[stage])}

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
        model, link, n = self.model, self.link, self.n
        # One head capacity for the whole run (the stages' cache length): the heads attend over the capacity,
        # so a per-prompt capacity meant new attention shapes, and one-time costs, in every prompt.
        fast = self._drafter_for(prompt, options, cache_len)
        spd = SpdPrompt(
            model,
            self.drafter,
            n,
            options,
            prompt,
            prompt_index,
            min_spec_capacity=cache_len,
            fast=fast,
            graphs=self.graphs,
        )
        spd.start(*self._prefill(spd.tokens, cache_len))
        crop = NO_CROP
        local_out = None
        host: dict[int, dict[str, float]] = {}
        while spd.running():
            t_start = time.perf_counter()
            step = spd.next_cycle()
            cycle, newest = step.index, spd.pipeline[0]
            # The token stays on the device (a draft is known to the host only once verified): no host read.
            verify = int(step.saturated and self.verify_last and spd.verifier.greedy)
            control = Control(OP_GO, cycle, len(spd.pipeline), crop, 0, newest.position, verify=verify)
            link.broadcast_control(control, token_t=newest.token_t)
            crop = NO_CROP
            t_control = time.perf_counter()  # last cycle's sends are retired a word later, not awaited here
            sends, local = [], {}
            self._fork()
            if self.local_stage is not None:
                with spd.timer.phase(cycle, "stage0", self.stage_stream), stream_context(self.stage_stream):
                    sends, _, local, local_out = self.local_stage.cycle(control, newest.token_t)
            draft_logits = spd.draft(cycle, self.draft_stream)
            recvs, outputs, anchors = self._recv_plan(len(spd.pipeline), 1, step.saturated, bool(verify))
            with stream_context(self.stage_stream):
                handles = link.exchange(sends, recvs)
            draft = spd.sample_draft(draft_logits, self.draft_stream)
            t_drafted = time.perf_counter()
            link.wait_recvs(handles, f"stage outputs of cycle {cycle}")
            t_received = time.perf_counter()
            self._join()
            for depth, entry in enumerate(spd.pipeline):
                got = local if depth == 0 and self.local_stage is not None else None
                if got is None and depth in anchors:
                    got = self._unstack(depth, anchors[depth])
                entry.feats.update(got or {})
            if step.saturated and not verify:  # the exiting token's last-stage output, verified here
                spd.pipeline[-1].hidden = outputs.get(n - 1, local_out)
            rejected_at = spd.decide(step, draft, verified=outputs[n - 1] if verify else None)
            if rejected_at is not None:
                crop = rejected_at
            t_end = time.perf_counter()
            host[cycle] = {
                "control": (t_control - t_start) * 1e6,
                "issue": (t_drafted - t_control) * 1e6,
                "wait": (t_received - t_drafted) * 1e6,
                "decide": (t_end - t_received) * 1e6,
                "cycle": (t_end - t_start) * 1e6,
            }
        states = {index: state for index, state, _ in spd.record.cycles}
        self.cycle_syncs.append(tuple((states[c], k) for c, k in sorted(spd.cycle_syncs.items())))
        return self._finish(spd.record, spd.timer, host)

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
