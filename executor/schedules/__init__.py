"""Real decode loops (AR, SPD, chain SD) over the fast model; `run_method` is the one entry point the CLI uses."""

from __future__ import annotations

from spdsim.contract import METHODS as ALL_METHODS

# the methods the executor runs for real, in the contract's spelling (spdsim.contract.vocabulary)
METHODS = tuple(m for m in ALL_METHODS if m in {"ar", "spd", "draft-model", "eagle3"})


def run_method(name: str, model, prompts, **opts):
    """Decode `prompts` with method `name`; returns a `RunResult` (write it with `executor.rundir.write_run_dir`).

    Common options: max_new_tokens, temperature, seed, synthetic_alpha, stop_token_ids, warmup, use_graphs,
    progress (a `base.PromptProgress` called between prompts, warm-up ones labelled; default None: silent).
    spd: stages, stage_layers, spec_layers (1), aggr_feature_bound ("auto"), head (v11 checkpoint; else an
    untrained drafter seeded from `seed`). draft-model: draft_model (a FastModel), k. eagle3: head (checkpoint
    from `save_eagle3`; else untrained), k.
    """
    from executor.schedules.dispatch import dispatch

    return dispatch(name, model, prompts, opts)


def lossless_check(model, prompts, result, progress=None) -> tuple[int, int]:
    """(prompts whose tokens equal greedy AR's, prompts) for a temperature-0 `RunResult`; ``progress`` hears the
    AR reference's prompts."""
    from executor.schedules.dispatch import lossless_check as check

    return check(model, prompts, result, progress)
