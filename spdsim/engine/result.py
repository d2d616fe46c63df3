"""What a simulation returns: token commit times, resource busy intervals and counters.

Metrics, tables, Chrome traces and plots are all derived from a Result; nothing else is kept. The engine stores
the rows as columns (``spdsim.engine.table.Table``); they iterate as the dataclasses below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from spdsim.scenario.config import Scenario

if TYPE_CHECKING:
    from collections.abc import Sequence

# Interval kinds, drawn in distinct colours by the timeline.
BUSY = "busy"  # useful work
FLUSHED = "flushed"  # work whose token was discarded after a rejection
COMM = "comm"  # send / broadcast / gather
DRAFT = "draft"  # drafter work


@dataclass(frozen=True)
class Interval:
    """One resource ("stage0", "drafter", "gpu0", "controller", ...) busy over [start_ns, end_ns)."""

    resource: str
    start_ns: int
    end_ns: int
    kind: str
    label: str  # phase name, e.g. "forward", "verify", "pdm"
    request: int
    iteration: int  # cycle (SPD/PPSD) or draft-verify iteration index within the request


@dataclass(frozen=True)
class TokenCommit:
    """One committed output token."""

    request: int
    index: int  # 0-based position among the request's generated tokens
    commit_ns: int  # absolute simulated time
    iteration: int
    from_draft: bool  # True: an accepted draft; False: target's own (bonus / replacement / AR) token


@dataclass(frozen=True)
class Verification:
    """One verification event: how many drafts were checked and how many accepted (vLLM counting)."""

    request: int
    iteration: int
    time_ns: int
    drafted: int
    accepted: int
    state: str  # SPD: "saturated" | "refill"; chains: "chain"


@dataclass(frozen=True)
class StepRequest:
    """A request carried by a batched step: its spans carry request -1 (they serve several), and these rows say
    which requests each step (the spans' ``iteration``) served, so every request's spans can be found."""

    step: int
    request: int


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    # columnar tables (spdsim.engine.table.Table) from the engine; any sequence of rows is accepted
    tokens: Sequence[TokenCommit]
    intervals: Sequence[Interval]
    verifications: Sequence[Verification]
    iterations: int  # cycles (pipelines) or draft-verify iterations (chains), summed over requests
    gpus: int  # GPUs the method occupies
    end_ns: int
    request_start_ns: tuple[int, ...]  # decode start of each request (after prefill)
    # total busy time per resource, sorted by name; filled even when intervals are not recorded (pipelines)
    resource_busy_ns: tuple[tuple[str, int], ...] = ()
    request_sent_ns: tuple[int, ...] = ()  # when each request was sent (TTFT and E2E count from here)
    step_requests: Sequence[StepRequest] = ()  # batched servers, intervals recorded: who each step served
