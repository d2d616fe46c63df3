"""The per-verification trace (``trace.csv``): written by the executor, replayed by the simulator's ``trace``
acceptance model and by ``spdsim validate``. One row per drafted token checked by the target."""

from __future__ import annotations

from spdsim.contract.vocabulary import TRACE_STATES

TRACE_COLUMNS = (
    "prompt_id",
    "verify_index",
    "position",
    "method",
    "draft_index",
    "state",
    "width",
    "drafted_token",
    "target_token",
    "accepted",
)

__all__ = ["TRACE_COLUMNS", "TRACE_STATES"]
