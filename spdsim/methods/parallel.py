"""Parallel drafting: one drafter pass proposes a whole block, then verify K+1 (docs/baselines.md F3).

``dflash``: a block of K+1 query rows (the bonus token plus K masks) through ``draft_layers`` layers and the
target's lm_head; ``peagle``: K slots in one pass, with EAGLE-3's draft vocabulary. The pass cost grows only weakly with K (query rows).
"""

from __future__ import annotations

from spdsim.methods import Method
from spdsim.methods.batched import serve_chain_batch
from spdsim.methods.chain import run_draft_verify
from spdsim.methods.common import kv_lengths


def parallel_pass_ns(scenario, latency) -> list[int]:
    method = scenario.method
    if method.name == "dflash":  # bonus + K mask rows through the target's lm_head
        rows, vocab = method.draft_tokens + 1, 0
    else:  # P-EAGLE: K slots, EAGLE-3's draft vocabulary
        rows, vocab = method.draft_tokens, None
    return latency.parallel_draft_ns(method.draft_layers, rows, kv_lengths(scenario), vocab).tolist()


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
