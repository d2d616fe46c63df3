"""SpecDec++ decoding: the EAGLE-3 chain with an adaptive length (reference/baselines.md §3, F7).

After draft step i (1-based) the acceptance head reads the chain head's output hidden of the row that produced
draft i; ``cum *= p̂_i`` except for the first round (p̂_1 = 1, as coded in SpecDec++); stop when
``i >= k_min and 1 − cum > h``, always at ``k_max``. Verification is the chain's (lossless, F0). The trace logs
every drafted token with ``width`` = the length this iteration stopped at.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from executor.schedules.base import cache_length, prefill, window
from executor.schedules.chain import _Eagle3
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


class _AdaptiveEagle3(_Eagle3):
    def propose_adaptive(self, sequence, acceptance_head, threshold, k_min, k_max, verifier, timer, cycle):
        head, model = self.head, self.model
        drafts, probs = [], []
        start = self.committed_rows
        with timer.phase(cycle, "draft0"):
            hidden = head.fuse(self.pending)
            next_tokens = torch.tensor([sequence[start + 1 :]], device=model.device)
            positions = torch.arange(start, len(sequence) - 1, device=model.device)
            out, logits = head.step(hidden, model.embed(next_tokens), positions, self.cache)
        self.committed_rows = self.cache.length = len(sequence) - 1
        cumulative = 1.0
        for step in range(k_max):
            if step:
                with timer.phase(cycle, f"draft{step}"):
                    position = torch.tensor([len(sequence) + step - 2], device=model.device)
                    token_t = torch.tensor([[drafts[-1]]], device=model.device)
                    out, logits = head.step(out[:, -1:], model.embed(token_t), position, self.cache)
                    self.cache.length += 1
            token, q = verifier.sample(head.full_vocab_logits(logits[0, -1]))
            drafts.append(token)
            probs.append(q)
            if step:  # SpecDec++ skips the first round
                with timer.phase(cycle, "acceptance_head"):
                    cumulative *= float(acceptance_head.accept_probability(out[0, -1]))
            if len(drafts) >= k_min and 1.0 - cumulative > threshold:
                break
        self.cache.crop(self.committed_rows)
        return drafts, probs


def _run_prompt(model, head, acceptance_head, prompt, index, options, threshold, k_min, k_max):
    verifier = Verifier(options.temperature, options.prompt_seed(index), model.device)
    timer = PhaseTimer(model.device)
    tokens = list(prompt.tokens)
    cache = model.new_cache(cache_length(model, len(tokens), options, lookahead=k_max + 2))
    record = PromptRecorder(prompt.prompt_id, len(tokens), "specdecpp")
    collect = head.head_config.feature_layers
    logits, feats = prefill(model, tokens, cache, collect=collect)
    record.commit(verifier.sample(logits)[0])
    source = _AdaptiveEagle3(head, model, len(tokens), feats, options, k_max)
    while len(record.tokens) < options.max_new_tokens and not is_stop(record.tokens[-1], options):
        cycle = len(record.cycles)
        sequence = tokens + record.tokens
        drafts, draft_probs = source.propose_adaptive(
            sequence, acceptance_head, threshold, k_min, k_max, verifier, timer, cycle
        )
        k = len(drafts)
        start = len(sequence) - 1
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
                if rejected:
                    rows.append((position, i + 1, draft, int(target_logits[i].argmax()), 0))
                    continue
                accepted, token = verifier.check(target_logits[i], draft, draft_probs[i])
                rows.append((position, i + 1, draft, token, int(accepted)))
                emitted.append(token)
                rejected = not accepted
            if not rejected:
                emitted.append(verifier.sample(target_logits[k])[0])
        accepted_count = len(emitted) - 1
        record.log_verification(rows, "chain", k)
        cache.crop(start + 1 + accepted_count)
        source.observe(feats, accepted_count + 1)
        before = len(record.tokens)
        for i, token in enumerate(emitted):
            if len(record.tokens) < options.max_new_tokens and not is_stop(record.tokens[-1], options):
                record.commit(token, cycle, i < accepted_count)
        record.cycles.append((cycle, "chain", len(record.tokens) - before))
    return record.freeze(timer)


@torch.inference_mode()
def run_specdecpp(
    model,
    head,
    acceptance_head,
    prompts,
    threshold: float,
    k_min: int = 2,
    k_max: int = 10,
    options: DecodeOptions = DecodeOptions(),
) -> RunResult:
    """Decode with the EAGLE-3 head ``head`` and adaptive stopping by ``acceptance_head`` at threshold h."""
    options.validate()
    if options.synthetic_alpha is not None:
        raise SpdsimError(
            "specdecpp: synthetic acceptance is not supported (the head's hidden states matter)"
        )
    if not 0.0 < threshold < 1.0 or not 1 <= k_min <= k_max:
        raise SpdsimError(
            f"specdecpp: need 0 < h < 1 and 1 <= k_min <= k_max (got {threshold}, {k_min}, {k_max})"
        )
    runs = tuple(
        _run_prompt(model, head, acceptance_head, p, i, options, threshold, k_min, k_max)
        for i, p in enumerate(as_prompts(prompts))
    )
    config = {
        "method": "specdecpp",
        "stop_threshold": threshold,
        "k_min": k_min,
        "k_max": k_max,
        **asdict(options),
    }
    return RunResult("specdecpp", config, runs, str(model.device))
