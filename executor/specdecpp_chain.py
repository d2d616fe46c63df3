"""SpecDec++ decoding: the EAGLE-3 chain with an adaptive length (reference/baselines.md §3, F7).

After draft step i (1-based) the acceptance head reads the chain head's output hidden of the row that produced
draft i; ``cum *= p̂_i`` except for the first round (p̂_1 = 1, as coded in SpecDec++); stop when
``i >= k_min and 1 − cum > h``, always at ``k_max``. Verification is the chain's (lossless, F0). The trace logs
every drafted token with ``width`` = the length this iteration stopped at.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from executor.schedules.chain import Eagle3Drafter, run_chain_prompt
from executor.schedules.common import DecodeOptions, RunResult, as_prompts
from spdsim.errors import SpdsimError


class _AcceptanceStop:
    """SpecDec++'s stop rule for one proposal (a fresh one per proposal: it carries the running product)."""

    def __init__(self, acceptance_head, threshold: float, k_min: int):
        self.acceptance_head, self.threshold, self.k_min = acceptance_head, threshold, k_min
        self.cumulative = 1.0

    def __call__(self, hidden: torch.Tensor, drafted: int, timer, cycle: int) -> bool:
        if drafted > 1:  # SpecDec++ skips the first round
            with timer.phase(cycle, "acceptance_head"):
                self.cumulative *= float(self.acceptance_head.accept_probability(hidden))
        return drafted >= self.k_min and 1.0 - self.cumulative > self.threshold


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

    def new_stop_rule():
        return _AcceptanceStop(acceptance_head, threshold, k_min)

    def make_drafter(tokens, feats):
        return Eagle3Drafter(head, model, len(tokens), feats, options, k_max, new_stop_rule)

    collect = head.head_config.feature_layers
    runs = tuple(
        run_chain_prompt(model, p, i, options, "specdecpp", k_max, collect, make_drafter)
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
