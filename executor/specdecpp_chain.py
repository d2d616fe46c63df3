"""SpecDec++ decoding: the EAGLE-3 chain with an adaptive length (docs/baselines.md §3, F7).

After draft step i (1-based) the acceptance head reads the chain head's output hidden of the row that produced
draft i; ``cum *= p̂_i`` except for the first round (p̂_1 = 1, as coded in SpecDec++); stop when
``i >= k_min and 1 − cum > h``, always at ``k_max``. Verification is the chain's (lossless, F0). The trace logs
every drafted token with ``width`` = the length this iteration stopped at.

At T = 0 the iteration runs on the chain's graph-captured device path (``executor.schedules.chain_graphed``): the
graphs compute ALL k_max drafts and, after each draft from the second on, the acceptance head (phase
"acceptance_head"); the verify graph runs the (k_max + 1)-token target pass, computes the stop length L on the
device (``heads.specdecpp.stop_length``) and accepts at most L drafts, so the emitted tokens are exactly those of
the stop-early schedule (the target's token after d_L only sees d_1..d_L). What is counted is the schedule's: the
trace logs L rows with ``width`` = L; the timed phases are those of the k_max drafts the graphs ran and of the
(k_max + 1)-token verify (the device cost of this implementation, not of a stop-early one).
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from executor.graphs import GraphCache
from executor.heads.eagle3 import FastEagle3
from executor.heads.specdecpp import stop_length
from executor.schedules.base import TIMED, PromptProgress, decode_each
from executor.schedules.chain import Eagle3Drafter, run_chain_prompt
from executor.schedules.chain_graphed import ChainRuntime, GraphedEagle3, run_graphed_prompt
from executor.schedules.common import DecodeOptions, RunResult, as_prompts
from spdsim.contract import SpdsimError


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
    graphs: GraphCache | None = None,
    progress: PromptProgress | None = None,
) -> RunResult:
    """Decode with the EAGLE-3 head ``head`` and adaptive stopping by ``acceptance_head`` at threshold h.
    ``progress``: `base.decode_each` (every prompt is timed: no warm-up)."""
    options.validate()
    if options.synthetic_alpha is not None:
        raise SpdsimError(
            "specdecpp: synthetic acceptance is not supported (the head's hidden states matter)"
        )
    if not 0.0 < threshold < 1.0 or not 1 <= k_min <= k_max:
        raise SpdsimError(
            f"specdecpp: need 0 < h < 1 and 1 <= k_min <= k_max (got {threshold}, {k_min}, {k_max})"
        )

    prompts = as_prompts(prompts)
    if options.temperature == 0.0:
        return _run_graphed(
            model, head, acceptance_head, prompts, threshold, k_min, k_max, options, graphs, progress
        )

    def new_stop_rule():
        return _AcceptanceStop(acceptance_head, threshold, k_min)

    def make_drafter(tokens, feats):
        return Eagle3Drafter(head, model, len(tokens), feats, options, k_max, new_stop_rule)

    collect = head.head_config.feature_layers

    def decode(prompt, index):
        return run_chain_prompt(model, prompt, index, options, "specdecpp", k_max, collect, make_drafter)

    runs = decode_each(prompts, decode, TIMED, progress)
    return RunResult("specdecpp", _config(threshold, k_min, k_max, options), runs, str(model.device))


def _config(threshold: float, k_min: int, k_max: int, options: DecodeOptions) -> dict:
    return {
        "method": "specdecpp",
        "stop_threshold": threshold,
        "k_min": k_min,
        "k_max": k_max,
        **asdict(options),
    }


def _run_graphed(
    model, head, acceptance_head, prompts, threshold, k_min, k_max, options, graphs, progress
) -> RunResult:
    """T = 0: the chain's device path with k_max drafts, the acceptance head per draft, the stop rule on device."""
    max_prompt = max(len(p.tokens) for p in prompts)
    runtime = ChainRuntime(model, k_max, max_prompt, options, graphs if graphs is not None else GraphCache())
    source = GraphedEagle3(FastEagle3.from_head(head, model), runtime, max_prompt, options)

    def accept_fn(row: torch.Tensor) -> torch.Tensor:
        def fn(row):
            return acceptance_head.accept_probability(row[0, -1]).view(1)

        return runtime.graphs.run(("specdecpp-accept", 1, runtime.tag), fn, row)

    def stop(probs: torch.Tensor) -> torch.Tensor:
        return stop_length(probs, threshold, k_min)

    collect = head.head_config.feature_layers

    def decode(prompt, index):
        return run_graphed_prompt(
            model, prompt, index, options, "specdecpp", source, collect, accept_fn, stop
        )

    runs = decode_each(prompts, decode, TIMED, progress)
    return RunResult("specdecpp", _config(threshold, k_min, k_max, options), runs, str(model.device))
