"""The SPD authors' metric conventions (docs/spd.md §4.1, §5.1), beside ours (vLLM definitions, ``spdsim.engine.metrics``).

| quantity | ours (default) | the authors' (`eval_mp_pipeline_dataset.py`) |
| --- | --- | --- |
| speedup | pooled tokens/s over AR tokens/s, same hardware | per-sample mean of decode tok/s over a fixed AR figure |
| "theoretical" | none (closed form n·ρ in ``analytic``) | per sample n × new tokens / decode-loop steps, averaged |
| tokens | decoded tokens (the prefill token excluded) | new tokens, the prefill token included |
| steps | cycles (fill, refill included) | decode-loop steps: fill, refill and reject cycles included |
| EOS | requests stop at ``new_tokens`` | drafts in flight when an EOS is accepted are counted |
| sampling at T > 0 | priced by ``overheads.sampling_ns`` | top-k 50 / top-p 0.95 on target, draft and first token |

Closed form for one sample of D decoded tokens (+1 prefill token) with R rejections among the first D - 1
verifications: steps = (n - 1) + D + (n - 1)·R, theoretical = n·(D + 1) / steps. For i.i.d. α the expectation of
the ratio is taken to first order (E[steps] = (n - 1) + D + (n - 1)(D - 1)(1 - α)); asymptotically
S = n / (1 + (n - 1)(1 - α)).
"""

from __future__ import annotations

import math

import numpy as np

from spdsim.engine.result import Result
from spdsim.formulas import alpha_from_spd_speedup, spd_speedup


def asymptotic_speedup(alpha: float, num_stages: int) -> float:
    """S = n / (1 + (n - 1)(1 - α)): the long-sample limit of the authors' theoretical speedup."""
    return spd_speedup(alpha, num_stages)


def implied_alpha(speedup: float, num_stages: int) -> float:
    """α with asymptotic_speedup(α, n) = S (docs/spd.md §5.3)."""
    if num_stages <= 1:
        return math.nan
    return alpha_from_spd_speedup(num_stages, speedup)


def expected_theoretical(
    alpha: float, num_stages: int, decoded: int, count_prefill: bool = True, inflight_at_eos: bool = False
) -> float:
    """The authors' per-sample theoretical speedup for a sample of ``decoded`` verified tokens (first order).

    ``count_prefill``: the prefill token counts as a new token (the authors' convention).
    ``inflight_at_eos``: the n - 1 drafts in flight when the sample ends on an accepted EOS are counted (they are
    made before the loop stops); with probability α the last verification is an accept.
    """
    n = num_stages
    steps = (n - 1) + decoded + (n - 1) * max(decoded - 1, 0) * (1.0 - alpha)
    tokens = decoded + (1 if count_prefill else 0) + (alpha * (n - 1) if inflight_at_eos else 0.0)
    return n * tokens / steps


def per_sample_theoretical(result: Result, count_prefill: bool = True) -> list[float]:
    """n × new tokens / decode-loop steps of every request of a pipeline run (steps: the cycle index of the
    request's last commit + 1, fill and refill cycles included)."""
    n = result.scenario.method.num_stages
    last: dict[int, tuple[int, int]] = {}
    for token in result.tokens:
        count, _ = last.get(token.request, (0, 0))
        last[token.request] = (count + 1, token.iteration)
    values = []
    for request in sorted(last):
        count, iteration = last[request]
        values.append(n * (count + (1 if count_prefill else 0)) / (iteration + 1))
    return values


def authors_theoretical(result: Result, count_prefill: bool = True) -> float:
    """The authors' "theoretical speedup" of a pipeline run: the mean over samples (requests)."""
    return float(np.mean(per_sample_theoretical(result, count_prefill)))


def per_sample_tokens_per_s(result: Result) -> list[float]:
    """Decode tokens/s of every request (its first commit's request start to its last commit)."""
    spans: dict[int, list[int]] = {}
    for token in result.tokens:
        spans.setdefault(token.request, []).append(token.commit_ns)
    values = []
    for request in sorted(spans):
        start = result.request_start_ns[request]
        values.append(len(spans[request]) * 1e9 / max(spans[request][-1] - start, 1))
    return values


def authors_wall_speedup(result: Result, ar_tokens_per_s: float) -> float:
    """The authors' wall-clock speedup: mean of per-sample tok/s over a fixed AR figure."""
    return float(np.mean(per_sample_tokens_per_s(result))) / ar_tokens_per_s
