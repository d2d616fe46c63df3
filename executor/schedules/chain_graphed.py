"""Greedy (T = 0) chain SD with every iteration on the device: K draft passes and the (K+1)-token verify run as
CUDA graphs (``executor.graphs.GraphCache``; eager on the CPU, same functions) over run-level static buffers, and
acceptance is decided on the device. The host reads ONE small int tensor per iteration (``read_outcome``: accepted
count, proposal width, drafts, target tokens) to log the trace and commit tokens; nothing inside the draft loop
syncs, and draft tokens stay on the device between steps.

Iteration (S = prompt + committed tokens; the last committed token x_{S-1} is not yet in the target cache):

* draft0 — the drafter's catch-up on the previous verify, a fixed (K+1)-row pass fed entirely from the verify's
  device outputs (its target tokens t_0..t_K, accepted count n, start position, and for EAGLE-3 its features).
  Only rows up to n are real; the rows past them sit at positions beyond the committed prefix and are rewritten
  by the next draft steps before any query reads them (position masking: crop is free). The row at n gives
  draft 1. The first iteration after the prefill runs this catch-up eagerly over the prompt (variable length).
* draft1..draft{K-1} — one-row steps (EAGLE-3: feed back the head's own output hidden; draft model: a 1-token
  step of the fast model); with synthetic acceptance the draft is replaced on the device by the plan at its
  position (a run-level static buffer the plan is copied into, refreshed after a re-anchor).
* verify — the target over [x_{S-1}, d_1..d_K]; t = argmax, n = cumprod(d == t[:K]).sum() (clipped to the
  proposal width), emitted = d_1..d_n + t_n = t_0..t_n, next start S-1+n+1 and next last token t_n, all on the
  device.

Graph keys: ("<drafter>-draft0", K+1, window, id), ("<drafter>-draft", 1, window, id), ("verify", K+1, window, id)
with ``window = kv_bucket(last position + 1, capacity)`` and id that of the run's target cache (graphs are bound
to the run's buffers). SpecDec++ (``executor.specdecpp_chain``) runs all k_max drafts and the acceptance head
after each draft from the second on, and the verify graph computes the stop length on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch

from executor.graphs import GraphCache
from executor.schedules.base import cache_length, follow_synthetic, prefill, synthetic_drafts, window
from executor.schedules.common import DecodeOptions, PhaseTimer, PromptRecorder, PromptRun, is_stop

# Tests: on CUDA, raise on any device sync during an iteration's device work (from cycle 2 on, once the graphs of
# the prompt's first window are captured; a capture itself synchronizes).
SYNC_CHECK = False


def read_outcome(packed: torch.Tensor) -> list[int]:
    """The one host sync of an iteration: [accepted n, width, drafts (K), targets (K+1)]."""
    return packed.tolist()


@contextmanager
def _device_work(device: torch.device, cycle: int):
    if SYNC_CHECK and device.type == "cuda" and cycle >= 2:
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(0)
    else:
        yield


class ChainRuntime:
    """Run-level buffers shared by all prompts: the target cache, the draft plan by position, the drafts of an
    iteration, and the graphs."""

    def __init__(self, model, k: int, max_prompt: int, options: DecodeOptions, graphs: GraphCache):
        self.model, self.k, self.graphs = model, k, graphs
        self.cache = model.new_cache(cache_length(model, max_prompt, options, lookahead=k + 2))
        self.capacity = self.cache.max_len
        self.synthetic = options.synthetic_alpha is not None
        device = model.device
        self.plan = torch.zeros(self.capacity, dtype=torch.long, device=device)
        self.drafts = torch.zeros(k, dtype=torch.long, device=device)
        self.probs = torch.ones(k, dtype=torch.float32, device=device)  # SpecDec++ p̂ per draft (p̂_1 = 1)
        self.tag = id(self.cache)

    def load_plan(self, synthetic, prompt_len: int) -> None:
        """Copy a prompt's synthetic plan into the static buffer (by position): graphs read it there."""
        if synthetic is None:
            return
        plan = synthetic.planned_on(self.model.device)
        count = min(len(plan), self.capacity - prompt_len)
        self.plan[prompt_len : prompt_len + count].copy_(plan[:count])

    def replace(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """With synthetic acceptance, the planned draft at `position` [1] instead of `token` [1, 1]."""
        if not self.synthetic:
            return token
        return self.plan.index_select(0, position.clamp(0, self.capacity - 1)).view(1, 1)

    def verify(self, last, start, start_host: int, collect, stop_length=None):
        """Graph-captured verify of [last, drafts] at positions start..start+K; returns its static outputs."""
        k, model, cache = self.k, self.model, self.cache
        kv_len = window(cache, start_host + k)
        keys = tuple(sorted(set(collect)))

        def fn(last, drafts, start, probs):
            tokens = torch.cat([last, drafts]).view(1, k + 1)
            positions = start + torch.arange(k + 1, device=start.device)
            hidden, feats = model.forward_layers(
                model.embed(tokens), positions, 0, model.num_layers, cache, collect=keys, kv_len=kv_len
            )
            targets = model.head(hidden)[0].argmax(-1)
            if stop_length is None:
                width = torch.full((1,), k, dtype=torch.long, device=start.device)
            else:
                width = stop_length(probs).view(1)
            match = (drafts == targets[:k]) & (torch.arange(k, device=start.device) < width)
            n = match.long().cumprod(0).sum().view(1)
            packed = torch.cat([n, width, drafts, targets])
            outputs = {
                "packed": packed,
                "targets": targets,
                "n": n,
                "start": start + 0,
                "next_start": start + n + 1,
                "next_last": targets.index_select(0, n),
            }
            for key in keys:
                outputs[f"h{key}"] = feats[key]
            return outputs

        key = ("verify", k + 1, kv_len, stop_length is not None, self.tag)
        return self.graphs.run(key, fn, last, self.drafts, start, self.probs)


class GraphedEagle3:
    """EAGLE-3 head as drafter on the fast functional path (``FastEagle3``) with a 1-layer position-masked cache;
    row i pairs the target feature f_i with embed(x_{i+1}) and predicts x_{i+2}. Carry: (token, pos, row)."""

    name = "eagle3"

    def __init__(self, fast, runtime: ChainRuntime, max_prompt: int, options: DecodeOptions):
        self.fast, self.runtime = fast, runtime
        self.model = fast.model
        self.cache = fast.new_cache(max_prompt + options.max_new_tokens + runtime.k + 8)
        self.keys = tuple(sorted(set(fast.feature_layers)))

    def first(self, sequence: list[int], feats: dict[int, torch.Tensor]):
        """Eager catch-up over the prompt: rows 0..P-1 (prefill features, tokens x_1..x_P)."""
        fast, model, rt = self.fast, self.model, self.runtime
        rows = len(sequence) - 1
        tokens = torch.tensor([sequence[1:]], device=model.device)
        positions = torch.arange(rows, device=model.device)
        out = fast.forward(
            fast.fuse(feats), model.embed(tokens), positions, self.cache, window(self.cache, rows - 1)
        )
        row = out[:, -1:]
        token = fast.full_ids(fast.logits(row)[0, -1].argmax()).view(1, 1)
        pos = torch.full((1,), rows, dtype=torch.long, device=model.device)
        return rt.replace(token, pos + 1), pos, row

    def catch_up(self, verified: dict, start_host: int):
        fast, model, rt, k, keys = self.fast, self.model, self.runtime, self.runtime.k, self.keys
        kv_len = window(self.cache, start_host + k)

        def fn(targets, start, n, *feats):
            positions = start + torch.arange(k + 1, device=start.device)
            hidden = fast.fuse(dict(zip(keys, feats, strict=True)))
            out = fast.forward(hidden, model.embed(targets.view(1, k + 1)), positions, self.cache, kv_len)
            row = out.index_select(1, n)
            token = fast.full_ids(fast.logits(row)[0, -1].argmax()).view(1, 1)
            pos = start + n + 1
            return rt.replace(token, pos + 1), pos, row

        feats = [verified[f"h{key}"] for key in keys]
        key = ("eagle3-draft0", k + 1, kv_len, rt.tag)
        return rt.graphs.run(key, fn, verified["targets"], verified["start"], verified["n"], *feats)

    def step(self, carry, sequence_len: int, index: int):
        """Draft `index` + 1 from the row at position S − 2 + index."""
        fast, model, rt = self.fast, self.model, self.runtime
        kv_len = window(self.cache, sequence_len - 2 + index)

        def fn(token, pos, row):
            out = fast.forward(row, model.embed(token), pos, self.cache, kv_len)
            nxt = fast.full_ids(fast.logits(out)[0, -1].argmax()).view(1, 1)
            return rt.replace(nxt, pos + 2), pos + 1, out

        return rt.graphs.run(("eagle3-draft", 1, kv_len, rt.tag), fn, *carry)


class GraphedDraftModel:
    """A small fast model as drafter; its cache holds the committed tokens but the last. Carry: (token, pos)."""

    name = "draft-model"

    def __init__(self, draft, runtime: ChainRuntime, max_prompt: int, options: DecodeOptions):
        self.draft, self.runtime = draft, runtime
        self.cache = draft.new_cache(cache_length(draft, max_prompt, options, lookahead=runtime.k + 2))

    def first(self, sequence: list[int], feats):
        logits, _ = prefill(self.draft, sequence, self.cache)
        pos = torch.full((1,), len(sequence), dtype=torch.long, device=self.draft.device)
        return self.runtime.replace(logits.argmax().view(1, 1), pos), pos

    def catch_up(self, verified: dict, start_host: int):
        draft, rt, k = self.draft, self.runtime, self.runtime.k
        kv_len = window(self.cache, start_host + k + 1)

        def fn(targets, start, n):
            positions = start + 1 + torch.arange(k + 1, device=start.device)
            hidden, _ = draft.forward_layers(
                draft.embed(targets.view(1, k + 1)), positions, 0, draft.num_layers, self.cache, kv_len=kv_len
            )
            token = draft.head(hidden.index_select(1, n))[0, -1].argmax().view(1, 1)
            pos = start + n + 2
            return rt.replace(token, pos), pos

        key = ("draft-model-draft0", k + 1, kv_len, rt.tag)
        return rt.graphs.run(key, fn, verified["targets"], verified["start"], verified["n"])

    def step(self, carry, sequence_len: int, index: int):
        """Feed draft `index` at position S − 1 + index; returns draft `index` + 1."""
        draft, rt = self.draft, self.runtime
        kv_len = window(self.cache, sequence_len - 1 + index)

        def fn(token, pos):
            hidden, _ = draft.forward_layers(
                draft.embed(token), pos, 0, draft.num_layers, self.cache, kv_len=kv_len
            )
            nxt = draft.head(hidden)[0, -1].argmax().view(1, 1)
            return rt.replace(nxt, pos + 1), pos + 1

        return rt.graphs.run(("draft-model-draft", 1, kv_len, rt.tag), fn, *carry)


# accept_fn(row [1, 1, H]) -> p̂ [1] (SpecDec++'s acceptance head); stop_length(probs [K]) -> width (0-dim long)
AcceptFn = Callable[[torch.Tensor], torch.Tensor]


def run_graphed_prompt(
    model,
    prompt,
    index: int,
    options: DecodeOptions,
    method: str,
    drafter,
    collect,
    accept_fn: AcceptFn | None = None,
    stop_length: Callable | None = None,
) -> PromptRun:
    """One prompt of greedy chain SD on the device path (see the module docstring); the trace's `width` is the
    proposal's length (K, or SpecDec++'s stop length)."""
    rt = drafter.runtime
    k, device = rt.k, model.device
    timer = PhaseTimer(device)
    tokens = list(prompt.tokens)
    seed = options.prompt_seed(index)
    synthetic = synthetic_drafts(model, tokens, options, seed, lookahead=k + 1, verify_rows=k + 1)
    rt.load_plan(synthetic, len(tokens))
    record = PromptRecorder(prompt.prompt_id, len(tokens), method)
    logits, feats = prefill(model, tokens, rt.cache, collect=collect)
    first = logits.argmax().view(1)
    record.commit(int(first))
    sequence_len = len(tokens) + 1
    last = first
    start = torch.full((1,), sequence_len - 1, dtype=torch.long, device=device)
    verified, prev_start = None, 0
    while len(record.tokens) < options.max_new_tokens and not is_stop(record.tokens[-1], options):
        cycle = len(record.cycles)
        start_host = sequence_len - 1  # position of the last committed token
        with _device_work(device, cycle):
            with timer.phase(cycle, "draft0"):
                if verified is None:
                    carry = drafter.first(tokens + record.tokens, feats)
                else:
                    carry = drafter.catch_up(verified, prev_start)
                rt.drafts[0:1].copy_(carry[0].view(1))
            for step in range(1, k):
                with timer.phase(cycle, f"draft{step}"):
                    carry = drafter.step(carry, sequence_len, step)
                    rt.drafts[step : step + 1].copy_(carry[0].view(1))
                if accept_fn is not None:  # p̂ of draft step + 1, from the row that produced it
                    with timer.phase(cycle, "acceptance_head"):
                        rt.probs[step : step + 1].copy_(accept_fn(carry[2]))
            with timer.phase(cycle, "verify"):
                verified = rt.verify(last, start, start_host, collect, stop_length)
                last, start = verified["next_last"], verified["next_start"]
        values = read_outcome(verified["packed"])
        accepted, width = values[0], values[1]
        drafts, targets = values[2 : 2 + k], values[2 + k :]
        rows = [(start_host + 1 + i, i + 1, drafts[i], targets[i], int(i < accepted)) for i in range(width)]
        record.log_verification(rows, "chain", width)
        before = len(record.tokens)
        for i, token in enumerate(targets[: accepted + 1]):
            if len(record.tokens) < options.max_new_tokens and not is_stop(record.tokens[-1], options):
                record.commit(token, cycle, i < accepted)
        record.cycles.append((cycle, "chain", len(record.tokens) - before))
        reanchors = synthetic.reanchors if synthetic is not None else 0
        follow_synthetic(synthetic, record)
        if synthetic is not None and synthetic.reanchors != reanchors:
            rt.load_plan(synthetic, len(tokens))
        prev_start = start_host
        sequence_len += accepted + 1
    return record.freeze(timer)
