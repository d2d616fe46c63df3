"""Autoregressive decoding over the fast model: prefill, then one graph-captured step per token."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from executor.cache import KVCache, kv_bucket
from executor.fastmodel import FastModel
from executor.graphs import GraphCache
from executor.sampling import warp_probs
from executor.timing import IntervalRecorder


@dataclass(frozen=True)
class SamplingConfig:
    """T = 0 is greedy; T > 0 samples from softmax(logits / T) after optional top-k / top-p
    (``executor.sampling.warp_probs``)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 128
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop_token_ids: tuple[int, ...] = ()
    use_graphs: bool = True


@dataclass(frozen=True)
class ARResult:
    prompt_len: int
    tokens: tuple[int, ...]
    prefill_us: float
    step_us: tuple[float, ...]  # device time of each decode step after the first token
    wall_s: float  # prefill + all steps, host clock
    token_times_us: tuple[float, ...] = ()  # host clock at each token's commit since the prefill started
    # start of each step_us interval since the prefill's start, on the clock that timed them (device or host)
    step_start_us: tuple[float, ...] = ()

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.wall_s if self.wall_s > 0 else float("nan")


def pick_token(
    logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """Next token ``[B]`` from logits ``[B, V]``: argmax, or a draw from the warped distribution."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    return torch.multinomial(warp_probs(logits, sampling), 1, generator=generator).squeeze(-1)


def decode_step_fn(model: FastModel, cache: KVCache, kv_len: int):
    """The AR step as a fixed-shape callable: (token [1, 1], position [1]) -> logits [1, V]."""

    def step(token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        hidden, _ = model.forward_layers(
            model.embed(token), position, 0, model.num_layers, cache, kv_len=kv_len
        )
        return model.head(hidden)[:, -1]

    return step


def prefill(model: FastModel, cache: KVCache, prompt_ids: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Run the whole prompt once; returns the logits of its last position ``[1, V]``."""
    tokens = torch.tensor([list(prompt_ids)], device=model.device)
    positions = torch.arange(len(prompt_ids), device=model.device)
    kv_len = kv_bucket(len(prompt_ids), cache.max_len)
    return model(tokens, positions, cache, kv_len=kv_len)[:, -1]


@torch.inference_mode()
def generate_ar(
    model: FastModel,
    prompt_ids: list[int] | tuple[int, ...],
    gen: GenerationConfig,
    *,
    cache: KVCache | None = None,
    graphs: GraphCache | None = None,
) -> ARResult:
    """Greedy or sampled AR decoding of one prompt (batch 1); every step's device time is recorded."""
    needed = len(prompt_ids) + gen.max_new_tokens
    cache = model.new_cache(needed) if cache is None else cache
    if needed > cache.max_len:
        raise ValueError(f"prompt + max_new_tokens = {needed} exceeds the cache ({cache.max_len})")
    cache.reset()
    graphs = GraphCache(enabled=gen.use_graphs) if graphs is None else graphs
    generator = None
    if not gen.sampling.greedy:
        generator = torch.Generator(device=model.device).manual_seed(gen.sampling.seed)
    recorder = IntervalRecorder(model.device)

    start = time.perf_counter()
    recorder.start()
    token = pick_token(prefill(model, cache, prompt_ids), gen.sampling, generator)
    recorder.stop()
    tokens = [int(token)]
    commits = [(time.perf_counter() - start) * 1e6]
    position = torch.tensor([len(prompt_ids)], device=model.device)
    while len(tokens) < gen.max_new_tokens and tokens[-1] not in gen.stop_token_ids:
        kv_len = kv_bucket(len(prompt_ids) + len(tokens), cache.max_len)
        recorder.start()
        # The captured step is bound to this cache (the closure keeps it alive, so its id stays unique).
        logits = graphs.run(
            ("ar", id(cache), kv_len), decode_step_fn(model, cache, kv_len), token.view(1, 1), position
        )
        token = pick_token(logits, gen.sampling, generator)
        recorder.stop()
        position += 1
        tokens.append(int(token))
        commits.append((time.perf_counter() - start) * 1e6)
    wall_s = time.perf_counter() - start
    intervals, starts = recorder.intervals_us(), recorder.starts_us()
    return ARResult(
        len(prompt_ids),
        tuple(tokens),
        intervals[0],
        tuple(intervals[1:]),
        wall_s,
        tuple(commits),
        tuple(starts[1:]),
    )
