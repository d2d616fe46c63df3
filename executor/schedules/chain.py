"""Chain speculative decoding (reference/baselines.md F0, F2): K serial drafts, then one target pass over K+1
tokens; accept the longest verified prefix, emit the target's correction or bonus token, crop the KV caches.

Drafters: `draft-model` (a smaller fast model with the same vocabulary, its own KV cache) and `eagle3` (the
EAGLE-3-style head over fused target features; its rows at positions >= the last committed one are rebuilt from
real target features every iteration, so its cache keeps only rows built from them).
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from executor.schedules.base import cache_length, prefill, synthetic_drafts, window
from executor.schedules.common import (
    DecodeOptions,
    PhaseTimer,
    PromptRecorder,
    RunResult,
    Verifier,
    as_prompts,
    is_stop,
)
from spdsim.errors import SpdsimError


class _DraftModel:
    """A small causal LM as drafter: catches up on committed tokens, then drafts one token per pass."""

    def __init__(self, draft, prompt: list[int], options: DecodeOptions, k: int):
        self.draft = draft
        self.cache = draft.new_cache(cache_length(draft, len(prompt), options, lookahead=k + 2))
        if len(prompt) > 1:
            prefill(draft, prompt[:-1], self.cache)
        self.processed = len(prompt) - 1  # tokens [0, processed) are in the draft cache

    def propose(self, sequence: list[int], k: int, verifier: Verifier, synthetic, timer, cycle):
        """K drafts after `sequence` (prompt + committed tokens); returns (tokens, their q or None)."""
        drafts, probs = [], []
        feed = sequence[self.processed :]
        position = self.processed
        for step in range(k):
            with timer.phase(cycle, f"draft{step}"):
                ids = torch.tensor([feed], device=self.draft.device)
                positions = torch.arange(position, position + len(feed), device=self.draft.device)
                logits = self.draft.forward(
                    ids, positions, self.cache, kv_len=window(self.cache, position + len(feed) - 1)
                )
            token, q = verifier.sample(logits[0, -1])
            if synthetic is not None:
                token = synthetic.replace(len(sequence) + step)
            drafts.append(token)
            probs.append(q)
            position += len(feed)
            feed = [token]
        self.processed = position  # the last draft was never fed
        return drafts, probs

    def rollback(self, committed_len: int) -> None:
        """Keep only positions whose tokens were committed (the cache holds positions < processed)."""
        self.processed = min(self.processed, committed_len)
        self.cache.crop(self.processed)


class _Eagle3:
    """EAGLE-3 head as drafter; row i pairs target feature f_i with embed(x_{i+1}) and predicts x_{i+2}."""

    def __init__(
        self, head, model, prompt_len: int, feats: dict[int, torch.Tensor], options: DecodeOptions, k: int
    ):
        self.head, self.model = head, model
        self.cache = head.new_cache(capacity=prompt_len + options.max_new_tokens + k + 8)
        self.pending = feats  # target features of positions [committed_rows, len(sequence) − 1)
        self.committed_rows = 0

    def propose(self, sequence: list[int], k: int, verifier: Verifier, synthetic, timer, cycle):
        head, model = self.head, self.model
        drafts, probs = [], []
        start = self.committed_rows
        with timer.phase(cycle, "draft0"):
            hidden = head.fuse(self.pending)
            next_tokens = torch.tensor([sequence[start + 1 :]], device=model.device)
            positions = torch.arange(start, len(sequence) - 1, device=model.device)
            out, logits = head.step(hidden, model.embed(next_tokens), positions, self.cache)
        self.committed_rows = self.cache.length = len(sequence) - 1
        for step in range(k):
            if step:
                with timer.phase(cycle, f"draft{step}"):
                    position = torch.tensor([len(sequence) + step - 2], device=model.device)
                    token_t = torch.tensor([[drafts[-1]]], device=model.device)
                    out, logits = head.step(out[:, -1:], model.embed(token_t), position, self.cache)
                    self.cache.length += 1
            token, q = verifier.sample(head.full_vocab_logits(logits[0, -1]))
            if synthetic is not None:
                token = synthetic.replace(len(sequence) + step)
            drafts.append(token)
            probs.append(q)
        self.cache.crop(self.committed_rows)
        return drafts, probs

    def observe(self, feats: dict[int, torch.Tensor], keep: int) -> None:
        """Target features of the verify pass; the first `keep` positions are committed."""
        self.pending = {index: value[:, :keep] for index, value in feats.items()}


def _run_prompt(model, drafter_kind, drafter, prompt, index, options: DecodeOptions, k: int):
    seed = options.prompt_seed(index)
    verifier = Verifier(options.temperature, seed, model.device)
    timer = PhaseTimer(model.device)
    tokens = list(prompt.tokens)
    synthetic = synthetic_drafts(model, tokens, options, seed, lookahead=k + 1)
    cache = model.new_cache(cache_length(model, len(tokens), options, lookahead=k + 2))
    record = PromptRecorder(prompt.prompt_id, len(tokens), drafter_kind)
    collect = drafter.head_config.feature_layers if drafter_kind == "eagle3" else ()
    logits, feats = prefill(model, tokens, cache, collect=collect)
    record.commit(verifier.sample(logits)[0])
    if drafter_kind == "eagle3":
        source = _Eagle3(drafter, model, len(tokens), feats, options, k)
    else:
        source = _DraftModel(drafter, tokens, options, k)
    while len(record.tokens) < options.max_new_tokens and not is_stop(record.tokens[-1], options):
        cycle = len(record.cycles)
        sequence = tokens + record.tokens
        drafts, draft_probs = source.propose(sequence, k, verifier, synthetic, timer, cycle)
        start = len(sequence) - 1  # position of the last committed token, not yet in the target cache
        with timer.phase(cycle, "verify"):
            ids = torch.tensor([[sequence[-1], *drafts]], device=model.device)
            positions = torch.arange(start, start + k + 1, device=model.device)
            hidden, feats = model.forward_layers(
                model.embed(ids),
                positions,
                0,
                model.num_layers,
                cache,
                collect=collect,
                kv_len=window(cache, start + k),
            )
            target_logits = model.head(hidden)[0]
            emitted, rows, rejected = [], [], False
            for i, draft in enumerate(drafts):
                position = start + 1 + i
                if rejected:  # logged for the trace, never checked
                    rows.append((position, i + 1, draft, int(target_logits[i].argmax()), 0))
                    continue
                accepted, token = verifier.check(target_logits[i], draft, draft_probs[i])
                rows.append((position, i + 1, draft, token, int(accepted)))
                emitted.append(token)
                rejected = not accepted
            if not rejected:
                emitted.append(verifier.sample(target_logits[k])[0])  # bonus token
        accepted_count = len(emitted) - 1
        record.log_verification(rows, "chain", k)
        committed = start + 1 + accepted_count  # positions [0, committed) hold verified tokens
        cache.crop(committed)
        if drafter_kind == "eagle3":
            source.observe(feats, accepted_count + 1)
        else:
            source.rollback(committed)
        before = len(record.tokens)
        for i, token in enumerate(emitted):
            if len(record.tokens) < options.max_new_tokens and not is_stop(record.tokens[-1], options):
                record.commit(token, cycle, i < accepted_count)
        record.cycles.append((cycle, "chain", len(record.tokens) - before))
    return record.freeze(timer)


@torch.inference_mode()
def run_chain(
    model, drafter, prompts, kind: str, k: int, options: DecodeOptions = DecodeOptions()
) -> RunResult:
    """Chain SD with `kind` "draft-model" (drafter: a fast model) or "eagle3" (drafter: an Eagle3Head)."""
    options.validate()
    if kind not in ("draft-model", "eagle3"):
        raise SpdsimError(f"chain method {kind!r} unknown (allowed: draft-model, eagle3)")
    if k < 1:
        raise SpdsimError(f"k (drafts per iteration) must be >= 1, got {k}")
    if kind == "draft-model" and drafter.cfg.vocab_size != model.cfg.vocab_size:
        raise SpdsimError(
            f"draft model vocab_size {drafter.cfg.vocab_size} differs from the target's {model.cfg.vocab_size}"
        )
    runs = tuple(
        _run_prompt(model, kind, drafter, p, i, options, k) for i, p in enumerate(as_prompts(prompts))
    )
    config = {"method": kind, "k": k, **asdict(options)}
    return RunResult(kind, config, runs, str(model.device))
