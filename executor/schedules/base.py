"""Pieces the schedules share on top of the fast model: cache sizing, attention windows, the untimed warm-up
prompts, the per-prompt loop with its progress reports, a prefill that also returns anchor features, and the
target's greedy reference continuation (synthetic acceptance)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch

from executor.cache import kv_bucket
from executor.schedules.common import DecodeOptions, Prompt, PromptRun, SyntheticDrafts

# progress(phase, done, total): phase WARMUP (untimed decodes) or TIMED; `decode_each` says when it is called
PromptProgress = Callable[[str, int, int], None]
WARMUP, TIMED = "warm-up", "timed"


def cache_length(model, prompt_len: int, options: DecodeOptions, lookahead: int = 0) -> int:
    needed = prompt_len + options.max_new_tokens + lookahead + options.kv_margin
    return min(needed, model.max_seq_len)


def window(cache, last_position: int) -> int:
    """Attention window of a step whose largest position is `last_position` (the AR schedule's buckets, so
    every schedule computes bit-identical logits to AR for the same token at the same position)."""
    return kv_bucket(last_position + 1, cache.max_len)


def starting_windows(prompt: Prompt, lookahead: int = 0) -> tuple[int, ...]:
    """Attention windows of the prompt's first decode positions (the first token after the prefill sits at
    position ``len(prompt.tokens)``, then ``lookahead`` more): the windows its first cycles run in. Uncapped by a
    cache's size, so two prompts with the same starting windows share them in every cache whatever its capacity
    (a cache's window is ``min(uncapped window, capacity)``)."""
    first = len(prompt.tokens)
    return tuple(kv_bucket(position + 1, sys.maxsize) for position in range(first, first + lookahead + 1))


def warmup_prompts(prompts: Sequence[Prompt], lookahead: int = 0) -> tuple[Prompt, ...]:
    """The prompts to decode untimed before the timed ones: one per distinct `starting_windows`, the longest of
    each group (it reaches the furthest windows), in order of first appearance. Compiled or graph-captured steps
    are keyed by window (and SPD's draft rows: a fill has 1, 2, ... rows), so every shape a timed prompt meets
    first (its first cycles at its starting windows) is compiled before the clock starts. A warm-up of the first
    prompt alone left a prompt that starts in another window compiling inside the timed region (8 s on an H100).
    ``lookahead``: decode positions past the first that a prompt's first cycles reach (a fill that crosses a
    window boundary meets other shapes than one that does not)."""
    longest: dict[tuple[int, ...], Prompt] = {}
    for prompt in prompts:
        key = starting_windows(prompt, lookahead)
        if key not in longest or len(prompt.tokens) > len(longest[key].tokens):
            longest[key] = prompt
    return tuple(longest.values())


def warms_up(requested: bool | None, device: torch.device) -> bool:
    """Whether a run decodes `warmup_prompts` untimed first: as ``requested``, by default on CUDA (where compiles
    and graph captures would otherwise fall in the first timed prompts). Every schedule, single- or
    multi-process, follows this rule."""
    return device.type == "cuda" if requested is None else bool(requested)


def decode_each(
    prompts: Sequence[Prompt],
    decode: Callable[[Prompt, int], PromptRun],
    phase: str = TIMED,
    progress: PromptProgress | None = None,
) -> tuple[PromptRun, ...]:
    """``decode(prompt, index)`` for each prompt in turn. ``progress`` hears (phase, 0, total) before the
    first prompt and (phase, done, total) after each one: only between prompts, where no clock runs (a prompt
    is timed inside ``decode``, from its prefill's end to its last commit), so a slow report never shows in
    the timings."""
    if progress is not None and prompts:
        progress(phase, 0, len(prompts))
    runs = []
    for index, prompt in enumerate(prompts):
        runs.append(decode(prompt, index))
        if progress is not None:
            progress(phase, index + 1, len(prompts))
    return tuple(runs)


def forward_tokens(
    model, tokens: list[int], start: int, cache, collect=()
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """`tokens` at positions [start, start + len) through all layers, in the AR schedule's attention window;
    returns (final hidden [1, T, H], collected features [1, T, H])."""
    ids = torch.tensor([tokens], device=model.device)
    positions = torch.arange(start, start + len(tokens), device=model.device)
    return model.forward_layers(
        model.embed(ids),
        positions,
        0,
        model.num_layers,
        cache,
        collect=collect,
        kv_len=window(cache, start + len(tokens) - 1),
    )


def prefill(model, tokens: list[int], cache, collect=()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Whole prompt through all layers; returns (last-position logits [V], collected features [1, T, H])."""
    hidden, feats = forward_tokens(model, tokens, 0, cache, collect=collect)
    return model.head(hidden[:, -1:])[0, 0], feats


def greedy_continuation(
    model, prefix: list[int], num_tokens: int, rows: int = 1, use_graphs: bool = True
) -> list[int]:
    """The target's greedy continuation of `prefix`: the synthetic reference.

    ``rows = 1``: the AR schedule's (graph-captured on a GPU). ``rows > 1``: each token from the first row of a
    ``rows``-token pass, as a chain's (K+1)-token verify computes it (the other rows repeat the token and are
    overwritten by the next pass). In bf16 on a GPU the kernels of a K+1-row pass round differently from one-row
    steps, and with random weights' nearly flat logits that moves argmaxes: an AR reference then leaves the chain's
    committed tokens (24–33 re-anchors in 330 checks on an H200, each a planned accept the target refused, so
    realised α fell ~0.1 below nominal). A reference of the verify's own shape shares its kernels.
    ``use_graphs`` (``rows = 1``): the schedule's own choice, so a run without graphs captures none."""
    if num_tokens < 1:
        return []
    if rows == 1:
        from executor.schedules.ar import GenerationConfig, generate_ar

        cache = model.new_cache(len(prefix) + num_tokens)
        return list(
            generate_ar(
                model, prefix, GenerationConfig(max_new_tokens=num_tokens, use_graphs=use_graphs), cache=cache
            ).tokens
        )
    with torch.inference_mode():
        cache = model.new_cache(len(prefix) + num_tokens + rows)
        logits, _ = prefill(model, prefix, cache)
        tokens = [int(logits.argmax())]
        while len(tokens) < num_tokens:
            position = len(prefix) + len(tokens) - 1  # of the last token, the pass's first row
            hidden, _ = forward_tokens(model, [tokens[-1]] * rows, position, cache)
            tokens.append(int(model.head(hidden)[0].argmax(-1)[0]))
    return tokens


def synthetic_drafts(
    model,
    tokens: list[int],
    options: DecodeOptions,
    seed: int,
    lookahead: int,
    verify_rows: int = 1,
    use_graphs: bool = True,
):
    """The prompt's synthetic-acceptance draft replacer (None without `synthetic_alpha`); it plans `lookahead`
    tokens past the generation length, because drafts run ahead of commits. ``verify_rows``: the query rows of the
    schedule's verify pass, the shape its reference is computed in (``greedy_continuation``)."""
    if options.synthetic_alpha is None:
        return None
    return SyntheticDrafts(
        options.synthetic_alpha,
        tokens,
        options.max_new_tokens + lookahead,
        model.cfg.vocab_size,
        seed,
        lambda prefix, count: greedy_continuation(model, prefix, count, verify_rows, use_graphs),
    )


def follow_synthetic(synthetic, record) -> None:
    """After an iteration: re-anchor the synthetic reference if a committed token left it (time off the clock)."""
    if synthetic is not None:
        before = synthetic.reanchors
        record.pause(synthetic.follow(record.tokens))
        record.reanchors += synthetic.reanchors - before
