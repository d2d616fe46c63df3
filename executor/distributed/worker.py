"""One pipeline stage in its own process: prefill slice, per-cycle forward of one token, sends downstream.

Stage s runs layers ``split.ranges[s]`` against its own KV cache. In a cycle it forwards the token at
``position - s`` (stage 0 embeds the control word's token; the others use the hidden state received from stage
s-1 in the previous cycle), sends the output to stage s+1 (the last stage: to the controller, which verifies) and
the anchor features inside its layer range to the controller (the drafter's input). A control word with a crop
length discards what it received and crops its cache first (rejection).
"""

from __future__ import annotations

import math
import os
import signal
import time

import torch

from executor.cache import kv_bucket
from executor.distributed.comm import (
    NO_CROP,
    OP_END_PROMPT,
    OP_GO,
    OP_PREFILL,
    OP_SHUTDOWN,
    Control,
    Link,
)
from executor.graphs import GraphCache
from executor.schedules.spd import greedy_verify_fn
from executor.stages import StageSplit


def stage_anchors(anchor_indices: tuple[int, ...], split: StageSplit, stage: int) -> tuple[int, ...]:
    """HF hidden-state indices that stage ``stage`` produces and the drafter reads (h_0 is the controller's)."""
    start, end = split.ranges[stage]
    return tuple(b for b in anchor_indices if start < b <= end)


class StageRunner:
    """State of one stage; ``prefill``/``cycle`` return (sends, recvs) for the caller to post in one group."""

    def __init__(
        self, model, split: StageSplit, stage: int, anchors: tuple[int, ...], link: Link, graphs: bool
    ):
        self.model = model
        self.split = split
        self.stage = stage
        self.start, self.end = split.ranges[stage]
        self.anchors = anchors
        self.link = link
        roles = link.roles
        self.last = stage == split.num_stages - 1
        self.next_rank = roles.controller if self.last else roles.stage_rank(stage + 1)
        self.prev_rank = roles.stage_rank(stage - 1) if stage > 0 else None
        self.local_controller = link.rank == roles.controller
        self.graphs = GraphCache(enabled=graphs)
        self.cache = None
        self.positions: torch.Tensor | None = None  # device arange: per-cycle positions are views of it
        self.inbox: torch.Tensor | None = None
        self.inbox_handles: list = []
        self.forward_us: list[float] = []
        self._events: list = []
        self.tokens_at: torch.Tensor | None = None  # last stage: the id that entered stage 0 at each position
        self._verify_fn = greedy_verify_fn(model) if self.last else None

    # -- prompt lifecycle -----------------------------------------------------------------------------------
    def begin(self, cache_len: int) -> None:
        if self.cache is None or self.cache.max_len != cache_len:
            self.cache = self.model.new_cache(cache_len)
            self.graphs = GraphCache(enabled=self.graphs.enabled)
        self.cache.reset()
        if self.positions is None or self.positions.numel() != cache_len:
            self.positions = torch.arange(cache_len, device=self.model.device)
            if self.last:
                self.tokens_at = torch.zeros(cache_len, dtype=torch.int64, device=self.model.device)
        self.inbox, self.inbox_handles = None, []
        self.forward_us, self._events = [], []

    def drain_inbox(self) -> None:
        """Complete the receive posted last cycle, also when its hidden state is stale (a rejection flushed it).

        Every posted receive is awaited before its handle is dropped: with gloo, a receive whose work is
        destroyed while pending leaves the pair's send/receive matching inconsistent, and a later receive
        never completes (the intermittent 4-rank hang, issue 15)."""
        if self.inbox_handles:
            self.link.wait_recvs(self.inbox_handles, f"hidden state from stage {self.stage - 1}")
            self.inbox_handles = []

    def _hidden(self, tokens: int) -> torch.Tensor:
        cfg = self.model.cfg
        return torch.empty(1, tokens, cfg.hidden_size, device=self.model.device, dtype=self.model.dtype)

    def prefill(self, ids: torch.Tensor) -> tuple[list, list, dict[int, torch.Tensor], torch.Tensor]:
        """Run the prompt through this stage; returns (sends, recvs, anchors, output hidden)."""
        model = self.model
        length = ids.numel()
        if self.stage == 0:
            hidden = model.embed(ids.view(1, -1))
        else:
            hidden = self._hidden(length)
            handles = self.link.exchange([], [(hidden, self.prev_rank)])
            self.link.wait_recvs(handles, f"prefill hidden state from stage {self.stage - 1}")
        positions = torch.arange(length, device=model.device)
        window = kv_bucket(length, self.cache.max_len)
        out, feats = model.forward_layers(
            hidden, positions, self.start, self.end, self.cache, collect=self.anchors, kv_len=window
        )
        sends = [(out.contiguous(), self.next_rank)]
        if self.anchors and not self.local_controller:
            sends.append((self._stack(feats), self.link.roles.controller))
        return sends, [], feats, out

    def _stack(self, feats: dict[int, torch.Tensor]) -> torch.Tensor:
        return torch.stack([feats[b] for b in self.anchors]).contiguous()

    def cycle(
        self, control: Control, token_t: torch.Tensor | None = None
    ) -> tuple[list, list, dict[int, torch.Tensor], torch.Tensor | None]:
        """One GO cycle; returns (sends, recvs, anchors, output) — empty when this stage holds no token.

        Stage 0 embeds ``token_t`` (a device ``[1, 1]`` id: the received control word's token field, or the
        co-located controller's draft) and positions are views of a device arange: no host-to-device copy."""
        model, stage = self.model, self.stage
        if control.crop_len != NO_CROP:
            self.cache.crop(control.crop_len)
        feats: dict[int, torch.Tensor] = {}
        out = None
        sends: list = []
        self.drain_inbox()
        if self.last and control.op == OP_GO:  # the control word's token, kept on the device for the verify
            self.tokens_at[control.position : control.position + 1].copy_(self.link.control_token().view(1))
        if stage < control.active:
            position = control.position - stage
            if stage == 0:
                hidden = model.embed(token_t if token_t is not None else self.link.control_token())
            else:
                hidden = self.inbox
            window = kv_bucket(position + 1, self.cache.max_len)
            position_t = self.positions[position : position + 1]
            self._mark()
            outputs = self.graphs.run(("stage", window), self._step_fn(window), hidden, position_t)
            out, feats = self.graphs.clone_outputs(outputs)
            self._mark(stop=True)
            sends.append(
                (self._verify(control, out) if control.verify and self.last else out, self.next_rank)
            )
            if self.anchors and not self.local_controller:
                sends.append((self._stack(feats), self.link.roles.controller))
        else:
            self.forward_us.append(math.nan)
        recvs = []
        if stage > 0 and stage - 1 < control.active:
            self.inbox = self._hidden(1)
            recvs.append((self.inbox, self.prev_rank))
        return sends, recvs, feats, out

    def _verify(self, control: Control, out: torch.Tensor) -> torch.Tensor:
        """Verify where it costs least (greedy): final norm + lm_head + argmax of the exiting token here, compared
        with the draft one position after it (depth n−1, which entered stage 0 n−2 cycles ago); only the packed
        int64 (accepted, target, drafted) goes to the controller instead of the [1, 1, H] hidden state."""
        candidate = control.position - self.split.num_stages + 2
        drafted = self.tokens_at[candidate : candidate + 1].view(1, 1)
        packed = self.graphs.run(("verify",), self._verify_fn, out, drafted)
        return self.graphs.clone_outputs(packed)

    def _step_fn(self, window: int):
        model, cache, start, end, anchors = self.model, self.cache, self.start, self.end, self.anchors

        def step(hidden: torch.Tensor, position: torch.Tensor):
            return model.forward_layers(hidden, position, start, end, cache, collect=anchors, kv_len=window)

        return step

    def _mark(self, stop: bool = False) -> None:
        if self.model.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        else:
            event = time.perf_counter()
        if not stop:
            self._events.append([len(self.forward_us), event, None])
            self.forward_us.append(math.nan)
        else:
            self._events[-1][2] = event

    def timings(self) -> torch.Tensor:
        """Forward time (µs) of every cycle of the prompt (NaN where the stage held no token), float64."""
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()
        for index, start, stop in self._events:
            if self.model.device.type == "cuda":
                self.forward_us[index] = start.elapsed_time(stop) * 1e3
            else:
                self.forward_us[index] = (stop - start) * 1e6
        return torch.tensor(self.forward_us, dtype=torch.float64)


def fault_point(fault: tuple[str, int, int] | None, control: Control) -> None:
    """Test hook: kill (SIGKILL) or stall this rank when it reaches the fault's cycle."""
    if fault is None or control.op != OP_GO or control.cycle != fault[2]:
        return
    if fault[0] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(3600)


def worker_loop(runner: StageRunner, fault: tuple[str, int, int] | None = None) -> None:
    """A stage rank's life: obey control words until SHUTDOWN."""
    link = runner.link
    controller = link.roles.controller
    idle = True
    while True:
        control = link.broadcast_control(None, idle=idle)
        fault_point(fault, control)
        idle = control.op == OP_END_PROMPT
        if control.op == OP_SHUTDOWN:
            link.flush_sends("send before shutdown")
            return
        if control.op == OP_PREFILL:
            runner.begin(control.cache_len)
            ids = link.broadcast_ids(None, control.prompt_len)
            sends, recvs, _, _ = runner.prefill(ids)
            link.exchange(sends, recvs)
            link.flush_sends(f"prefill send of stage {runner.stage}")
        elif control.op == OP_GO:  # last cycle's sends: retired by the next control word, not awaited here
            sends, recvs, _, _ = runner.cycle(control)
            runner.inbox_handles = link.exchange(sends, recvs)
        elif control.op == OP_END_PROMPT:
            link.flush_sends(f"send of stage {runner.stage}")
            runner.drain_inbox()
            timing = runner.timings().to(link.device)
            link.exchange([(timing, controller)], [])
            link.flush_sends(f"timings of stage {runner.stage}")
