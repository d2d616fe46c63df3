"""Parallel drafting: one drafter pass proposes a whole block, then verify K+1 (docs/baselines.md F3).

``dflash``: a block of K+1 query rows (the bonus token plus K masks) through ``draft_layers`` layers and the
target's lm_head; ``peagle``: K slots in one pass, with EAGLE-3's draft vocabulary. The pass cost grows only weakly with K (query rows).
"""

from __future__ import annotations

from spdsim.methods import Method
from spdsim.methods.batched import serve_chain_batch
from spdsim.methods.chain import run_draft_verify
from spdsim.methods.common import kv_lengths, parallel_pass_at


def parallel_pass_ns(scenario, latency) -> list[int]:
    """One parallel-drafting pass per committed count (DFlash block / P-EAGLE slots)."""
    return parallel_pass_at(scenario, latency, kv_lengths(scenario)).tolist()


def run_request(env, context, request, streams):
    pass_ns = parallel_pass_ns(context.scenario, context.latency)
    drafted = context.scenario.method.draft_tokens
    yield from run_draft_verify(env, context, request, streams, pass_ns, 1, drafted)


def _tp_gpus(scenario) -> int:
    return max(scenario.method.tensor_parallel, 1)


METHODS = (
    Method(
        "dflash",
        "DFlash: one non-causal drafter pass over a block drafts K tokens, verify K+1",
        "parallel",
        _tp_gpus,
        run_request,
        serve_chain_batch,
    ),
    Method(
        "peagle",
        "P-EAGLE: one EAGLE-style pass fills K mask slots in parallel, verify K+1",
        "parallel",
        _tp_gpus,
        run_request,
        serve_chain_batch,
    ),
)
