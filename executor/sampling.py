"""Sampling shared by every schedule: temperature / top-k / top-p warping (HF's warpers, in their order) and
speculative sampling that keeps the target's (warped) distribution (docs/baselines.md F0).

The SPD authors sample the target, the draft and the first token from the same warped distribution with
top_k = 50, top_p = 0.95 (docs/spd.md §1.3 step 3); ``AUTHORS_TOP_K`` / ``AUTHORS_TOP_P``. Speculative sampling
is lossless for any warping as long as p and q are the distributions the tokens are really drawn from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spdsim.contract import SpdsimError

AUTHORS_TOP_K = 50
AUTHORS_TOP_P = 0.95


@dataclass(frozen=True)
class Warp:
    """T > 0: softmax(logits / T) restricted to the top_k scores (0 = all), then to the top_p nucleus (1 = all)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def validate(self) -> None:
        check_warp(self.temperature, self.top_k, self.top_p)


def check_warp(temperature: float, top_k: int, top_p: float) -> None:
    if not temperature >= 0.0:
        raise SpdsimError(f"temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise SpdsimError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise SpdsimError(f"top_p must lie in (0, 1] (1 = off), got {top_p}")


def warp_probs(logits: torch.Tensor, sampling) -> torch.Tensor:
    """Probabilities (float32) of ``logits [..., V]`` after temperature, top-k and top-p, as transformers'
    ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` (ties with the k-th score kept) and ``TopPLogitsWarper``
    (drops the tokens whose ascending cumulative probability is <= 1 − top_p, keeps at least one).
    ``sampling``: anything with ``temperature``, ``top_k``, ``top_p`` (``Warp``, ``ar.SamplingConfig``, ...)."""
    scores = logits.float() / sampling.temperature
    top_k = getattr(sampling, "top_k", 0)
    top_p = getattr(sampling, "top_p", 1.0)
    if top_k > 0:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(scores, dim=-1, descending=False)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1 - top_p)
        drop_sorted[..., -1:] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return torch.softmax(scores, dim=-1)


def speculative_accept(
    p: torch.Tensor, q: torch.Tensor, draft: int, generator: torch.Generator | None
) -> tuple[bool, int]:
    """(accepted, emitted token) for a draft drawn from ``q``: accept with probability min(1, p(x)/q(x)), else
    draw from norm(max(0, p − q)). The emitted token is distributed exactly as ``p``."""
    ratio = p[draft] / q[draft].clamp_min(1e-30)
    u = torch.rand((), generator=generator, device=p.device)
    if bool(u < ratio):
        return True, draft
    residual = (p - q).clamp_min(0.0)
    total = residual.sum()
    residual = residual / total if bool(total > 0) else p
    return False, int(torch.multinomial(residual, 1, generator=generator))
