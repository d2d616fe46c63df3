"""The words the simulator and the executor share: method names, drafter placement, cycle states, phase names.

Both halves import these tuples instead of spelling the words themselves (``docs/vocabulary.md`` gives the
meaning of each word).

Drafter placement has two spellings for one choice, kept because both are written into committed run
directories and scenario files: the simulator's scenario field ``method.drafter_placement`` says where the
drafter runs (``own-gpu`` | ``stage0``), the executor's ``--drafter`` option says which rank runs it
(``own`` | ``colocated``). ``DRAFTER_FROM_EXECUTOR`` maps one onto the other; nothing else translates them.

Cycle states: an SPD cycle is in ``fill`` (the pipeline is filling after the prompt), ``refill`` (filling again
after a rejection flushed it) or ``saturated`` (every stage holds a speculative token); chain methods have one
state, ``chain``. A *verification* carries the state of the cycle that issued it, so the trace's ``refill`` is
"the first verification after a refill"; the executor's ``cycles.csv`` state of a cycle is the state of the cycle
itself.
"""

from __future__ import annotations

METHODS = (
    "ar",
    "spd",
    "draft-model",
    "eagle3",
    "mtp",
    "specdecpp",
    "cascade",
    "dflash",
    "peagle",
    "ppsd",
)
PIPELINE_METHODS = ("spd", "ppsd")  # methods whose target is split into pipeline stages
ACCEPTANCE_KINDS = ("iid", "positional", "spd-state", "trace", "preset")

DRAFTER_PLACEMENTS = ("own-gpu", "stage0")  # simulator: method.drafter_placement
EXECUTOR_DRAFTER_PLACEMENTS = ("own", "colocated")  # executor: --drafter, run config "drafter"
DRAFTER_FROM_EXECUTOR = {"own": "own-gpu", "colocated": "stage0"}
# Where SPD's greedy verify (final norm + lm_head + argmax + compare) runs: on the controller (the exiting hidden
# state travels there, the verify is serial after the stages) or on the last stage's GPU (only the token ids travel
# back, the verify is part of the last stage's member). Simulator: method.verify_placement; executor: verify_on.
VERIFY_PLACEMENTS = ("controller", "last-stage")
# Where SPD's stages run: each on its own GPU (the pipeline the method is for: a cycle waits for its slowest member)
# or all of them, with the drafter, on one GPU (the executor's single-process schedule: the members share one
# memory bus, so a cycle costs their sum). Simulator: method.stage_placement; an executor run is single-process
# when its config has no "drafter" (only the distributed launcher writes one).
STAGE_PLACEMENTS = ("gpu-per-stage", "one-gpu")

# Rows of a head-style drafter's lm_head: EAGLE-3's published heads draft over the 32k most frequent tokens (d2t).
# Simulator: method.draft_vocab_size; executor: random EAGLE-3 heads' --draft-vocab-size (0: the target's vocabulary).
DRAFT_VOCAB_SIZE = 32000

CYCLE_STATES = ("fill", "refill", "saturated", "chain")  # executor cycles.csv "state"
TRACE_STATES = ("saturated", "refill", "chain")  # trace.csv "state" (fill verifications count as refill)

# Phase names of the profile bundle (spdsim.contract.profile_schema.PHASE_COORDINATES gives their coordinates).
PHASES = (
    "layers",
    "embed",
    "head",
    "ar_step",
    "drafter",
    "chain_draft",
    "p2p",
    "cycle_fixed",
    "verify_fixed",
    "chain_fixed",
    "colocated_contention",
    "layers_tp",
    "allreduce",
    "host_issue",
    "stream_overlap",
)


def stage_placement_of_run(config: dict) -> str:
    """The simulator's ``stage_placement`` of an executor run: ``one-gpu`` unless the distributed launcher ran it."""
    return "gpu-per-stage" if "drafter" in config else "one-gpu"


def placement_from_executor(drafter: str) -> str:
    """The simulator's ``drafter_placement`` for an executor run's ``drafter`` (``own`` -> ``own-gpu``)."""
    return DRAFTER_FROM_EXECUTOR.get(drafter, "stage0")
