"""Chain speculative decoding (docs/baselines.md F0, F2): K serial drafts, then one target pass over K+1
tokens; accept the longest verified prefix, emit the target's correction or bonus token, crop the KV caches.

Drafters: `draft-model` (a smaller fast model with the same vocabulary, its own KV cache) and `eagle3` (the
EAGLE-3-style head over fused target features; its rows at positions >= the last committed one are rebuilt from
real target features every iteration, so its cache keeps only rows built from them). The per-prompt loop
`run_chain_prompt` (the eager loop, used at T > 0) is shared with SpecDec++ (`executor.specdecpp_chain`), whose
drafter stops early. At T = 0 both run on the graph-captured device path of `executor.schedules.chain_graphed`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import torch

from executor.graphs import GraphCache
from executor.heads.eagle3 import FastEagle3
from executor.schedules.base import (
    TIMED,
    WARMUP,
    PromptProgress,
    cache_length,
    decode_each,
    follow_synthetic,
    forward_tokens,
    prefill,
    synthetic_drafts,
    warmup_prompts,
    window,
)
from executor.schedules.chain_graphed import (
    ChainRuntime,
    GraphedDraftModel,
    GraphedEagle3,
    run_graphed_prompt,
)
from executor.schedules.common import (
    DecodeOptions,
    PhaseTimer,
    PromptRecorder,
    PromptRun,
    RunResult,
    Verifier,
    as_prompts,
    is_stop,
)
from spdsim.contract import SpdsimError

# stop(hidden, drafted, timer, cycle): asked after each draft with the head output row that produced it
StopRule = Callable[[torch.Tensor, int, PhaseTimer, int], bool]


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

    def after_verify(self, feats, committed: int) -> None:
        """Keep only positions whose tokens were committed (the cache holds positions < processed)."""
        self.processed = min(self.processed, committed)
        self.cache.crop(self.processed)


class Eagle3Drafter:
    """EAGLE-3 head as drafter; row i pairs target feature f_i with embed(x_{i+1}) and predicts x_{i+2}.

    `new_stop_rule` (None: always K drafts) gives each proposal a fresh `StopRule` that may end it early."""

    def __init__(
        self,
        head,
        model,
        prompt_len: int,
        feats: dict[int, torch.Tensor],
        options: DecodeOptions,
        k: int,
        new_stop_rule: Callable[[], StopRule] | None = None,
    ):
        self.head, self.model = head, model
        self.cache = head.new_cache(capacity=prompt_len + options.max_new_tokens + k + 8)
        self.pending = feats  # target features of positions [committed_rows, len(sequence) − 1)
        self.committed_rows = 0
        self.new_stop_rule = new_stop_rule

    def propose(self, sequence: list[int], k: int, verifier: Verifier, synthetic, timer, cycle):
        """Up to K drafts after `sequence`; returns (tokens, their q or None)."""
        head, model = self.head, self.model
        stop = self.new_stop_rule() if self.new_stop_rule is not None else None
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
            if stop is not None and stop(out[0, -1], len(drafts), timer, cycle):
                break
        self.cache.crop(self.committed_rows)
        return drafts, probs

    def after_verify(self, feats: dict[int, torch.Tensor], committed: int) -> None:
        """Target features of the verify pass, which started at row `committed_rows`; keep the committed ones."""
        keep = committed - self.committed_rows
        self.pending = {index: value[:, :keep] for index, value in feats.items()}


def run_chain_prompt(
    model, prompt, index: int, options: DecodeOptions, method: str, k: int, collect, make_drafter
) -> PromptRun:
    """One prompt of chain SD: each iteration the drafter proposes at most `k` drafts, one target pass checks
    them, and the KV caches are cropped to the committed tokens; the trace's `width` is the proposal's length.

    `make_drafter(prompt_tokens, prefill_feats)` builds the drafter after the prefill (features of `collect`)."""
    seed = options.prompt_seed(index)
    verifier = Verifier(options.temperature, seed, model.device, options.top_k, options.top_p)
    timer = PhaseTimer(model.device)
    tokens = list(prompt.tokens)
    synthetic = synthetic_drafts(model, tokens, options, seed, lookahead=k + 1)
    cache = model.new_cache(cache_length(model, len(tokens), options, lookahead=k + 2))
    record = PromptRecorder(prompt.prompt_id, len(tokens), method)
    logits, feats = prefill(model, tokens, cache, collect=collect)
    record.commit(verifier.sample(logits)[0])
    source = make_drafter(tokens, feats)
    while len(record.tokens) < options.max_new_tokens and not is_stop(record.tokens[-1], options):
        cycle = len(record.cycles)
        sequence = tokens + record.tokens
        drafts, draft_probs = source.propose(sequence, k, verifier, synthetic, timer, cycle)
        width = len(drafts)
        start = len(sequence) - 1  # position of the last committed token, not yet in the target cache
        with timer.phase(cycle, "verify"):
            hidden, feats = forward_tokens(model, [sequence[-1], *drafts], start, cache, collect=collect)
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
                emitted.append(verifier.sample(target_logits[width])[0])  # bonus token
        accepted_count = len(emitted) - 1
        record.log_verification(rows, "chain", width)
        committed = start + 1 + accepted_count  # positions [0, committed) hold verified tokens
        cache.crop(committed)
        source.after_verify(feats, committed)
        before = len(record.tokens)
        for i, token in enumerate(emitted):
            if len(record.tokens) < options.max_new_tokens and not is_stop(record.tokens[-1], options):
                record.commit(token, cycle, i < accepted_count)
        record.cycles.append((cycle, "chain", len(record.tokens) - before))
        follow_synthetic(synthetic, record)
    return record.freeze(timer)


@torch.inference_mode()
def run_chain(
    model,
    drafter,
    prompts,
    kind: str,
    k: int,
    options: DecodeOptions = DecodeOptions(),
    graphs: GraphCache | None = None,
    warmup: bool = False,
    progress: PromptProgress | None = None,
) -> RunResult:
    """Chain SD with `kind` "draft-model" (drafter: a fast model) or "eagle3" (drafter: an Eagle3Head).

    At T = 0 every iteration runs on the device path of `executor.schedules.chain_graphed` (graph-captured on a
    GPU, in `graphs` or a new GraphCache; one host sync per iteration); at T > 0 the eager loop below samples.
    ``warmup``: decode the prompts of `warmup_prompts` (one per starting window) untimed first, on the runtime and
    graphs the timed prompts use; the config's "warmup_prompts" counts them. ``progress``: see
    `base.decode_each`."""
    options.validate()
    if kind not in ("draft-model", "eagle3"):
        raise SpdsimError(f"chain method {kind!r} unknown (allowed: draft-model, eagle3)")
    if k < 1:
        raise SpdsimError(f"k (drafts per iteration) must be >= 1, got {k}")
    if kind == "draft-model" and drafter.cfg.vocab_size != model.cfg.vocab_size:
        raise SpdsimError(
            f"draft model vocab_size {drafter.cfg.vocab_size} differs from the target's {model.cfg.vocab_size}"
        )

    prompts = as_prompts(prompts)
    collect = drafter.head_config.feature_layers if kind == "eagle3" else ()
    # The first two iterations reach 2k + 2 positions past the first decode position (the second runs the first
    # graphed catch-up).
    warm = warmup_prompts(prompts, lookahead=2 * k + 2) if warmup else ()
    config = {"method": kind, "k": k, **asdict(options), "warmup_prompts": len(warm)}
    if options.temperature == 0.0:
        max_prompt = max(len(p.tokens) for p in prompts)
        runtime = ChainRuntime(model, k, max_prompt, options, graphs if graphs is not None else GraphCache())
        if kind == "eagle3":
            source = GraphedEagle3(FastEagle3.from_head(drafter, model), runtime, max_prompt, options)
        else:
            source = GraphedDraftModel(drafter, runtime, max_prompt, options)

        def graphed(prompt, index: int) -> PromptRun:
            return run_graphed_prompt(model, prompt, index, options, kind, source, collect)

        # untimed, on the runtime and graphs the timed prompts use
        decode_each(warm, lambda p, _: graphed(p, 0), WARMUP, progress)
        runs = decode_each(prompts, graphed, TIMED, progress)
        return RunResult(kind, config, runs, str(model.device))

    def make_drafter(tokens, feats):
        if kind == "eagle3":
            return Eagle3Drafter(drafter, model, len(tokens), feats, options, k)
        return _DraftModel(drafter, tokens, options, k)

    def decode(prompt, index: int) -> PromptRun:
        return run_chain_prompt(model, prompt, index, options, kind, k, collect, make_drafter)

    decode_each(warm, lambda p, _: decode(p, 0), WARMUP, progress)
    runs = decode_each(prompts, decode, TIMED, progress)
    return RunResult(kind, config, runs, str(model.device))
