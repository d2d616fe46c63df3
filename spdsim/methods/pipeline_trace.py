"""Every busy span of a deterministic pipeline request, built with numpy after the request has run.

With fixed latencies a cycle's spans are a function of (active stages, committed count, start time) only, so the
event loop (``pipeline._run_deterministic``) runs one SimPy event per token and records one row per event; this
module expands those rows into the spans ``pipeline._record_cycle`` would record cycle by cycle — same order,
same values, same flushes — as one column block of the run's span table. This is what makes a full trace cost
about as much as an untraced run (docs/design.md §3).
"""

from __future__ import annotations

import numpy as np

from spdsim.engine.result import BUSY, COMM, DRAFT, FLUSHED


def record_pipeline_spans(recorder, costs, request: int, segments: list[tuple[int, int, bool, bool]]) -> None:
    """Add the spans of one request whose events were ``segments``: (event start ns, committed count,
    preceded by a fill/refill block, preceded by a rejection's discard)."""
    if not segments:
        return
    n = costs.num_stages
    seg_start, seg_c, seg_refill, seg_reject = (np.asarray(col) for col in zip(*segments, strict=True))
    seg_start = seg_start.astype(np.int64)
    seg_c = seg_c.astype(np.int64)
    seg_refill = seg_refill.astype(bool)
    seg_reject = seg_reject.astype(bool)
    per_seg = np.where(seg_refill, n, 1)
    seg_first = np.cumsum(per_seg) - per_seg
    total = int(per_seg.sum())
    seg_of = np.repeat(np.arange(len(per_seg)), per_seg)
    position = np.arange(total) - seg_first[seg_of]
    active = np.where(seg_refill[seg_of], position + 1, n)
    c = seg_c[seg_of]
    duration = np.asarray(costs.cycle_ns[1:], dtype=np.int64)[active - 1, c]
    before = np.cumsum(duration) - duration
    start = (
        seg_start[seg_of]
        + np.where(seg_reject[seg_of], costs.reject_ns, 0)
        + before
        - before[seg_first][seg_of]
    )
    cycle = np.arange(total, dtype=np.int64)

    verify = np.where(active == n, costs.verify_ns, 0)
    begin = start + costs.control_ns
    end = start + duration - costs.fixed_ns - verify  # begin + the slowest member
    own_drafter = bool(costs.drafter_ns)

    # a rejection that is not the request's last token flushes its own cycle and the n-2 before it
    rejections = seg_first[1:][seg_reject[1:]] - 1
    flush_forward = np.zeros((total, n), dtype=bool)
    flush_draft = np.zeros(total, dtype=bool)
    for back in range(n - 1):
        flush_draft[rejections - back] = True
        flush_forward[rejections - back, : n - 1 - back] = True

    names = ["controller", *(f"stage{s}" for s in range(n)), "drafter", BUSY, COMM, DRAFT, FLUSHED]
    labels = ("control", "gather", "forward", "draft", "send", "pdm", "verify", "sync", "discard")
    names += labels
    code = {name: i for i, name in enumerate(names)}
    slots: list[tuple[int, np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]] = []
    always = np.ones(total, dtype=bool)

    def slot(resource: str, kind, label: str, lo: np.ndarray, hi: np.ndarray, valid: np.ndarray) -> None:
        kinds = kind if isinstance(kind, np.ndarray) else np.full(total, code[kind])
        slots.append((code[resource], kinds, code[label], lo, hi, valid))

    def flushable(mask: np.ndarray, kind: str) -> np.ndarray:
        return np.where(mask, code[FLUSHED], code[kind])

    slot("controller", COMM, "control", start, begin, always)
    stage0_draft = np.asarray(costs.stage0_draft_ns, dtype=np.int64)[c]
    cursor = begin
    for s in range(n):
        valid = active > s
        # each stage on its own GPU (or stream) starts with the cycle; back to back it follows the previous stage
        if not costs.back_to_back:
            cursor = begin
        if s == 0:
            gather = 0 if own_drafter else costs.gather_ns
            slot("stage0", COMM, "gather", cursor, cursor + gather, valid)
            cursor = cursor + gather
        forward = np.asarray(costs.forward_ns[s], dtype=np.int64)[c]
        slot(f"stage{s}", flushable(flush_forward[:, s], BUSY), "forward", cursor, cursor + forward, valid)
        cursor = cursor + forward
        if s == 0:
            slot("stage0", flushable(flush_draft, DRAFT), "draft", cursor, cursor + stage0_draft, valid)
            cursor = cursor + stage0_draft
        slot(f"stage{s}", COMM, "send", cursor, cursor + costs.send_ns[s], valid)
    if own_drafter:
        after_gather = begin + costs.gather_ns
        pdm = np.asarray(costs.drafter_ns, dtype=np.int64)[c]
        slot("drafter", COMM, "gather", begin, after_gather, always)
        slot("drafter", flushable(flush_draft, DRAFT), "pdm", after_gather, after_gather + pdm, always)
    slot("controller", BUSY, "verify", end, end + verify, always)
    slot("controller", COMM, "sync", end + verify, end + verify + costs.fixed_ns, always)
    discard = np.zeros(total, dtype=bool)
    discard[rejections] = True
    cycle_end = start + duration
    slot("controller", COMM, "discard", cycle_end, cycle_end + costs.reject_ns, discard)

    lo = np.stack([s[3] for s in slots], axis=1)
    hi = np.stack([s[4] for s in slots], axis=1)
    keep = (np.stack([s[5] for s in slots], axis=1) & (hi > lo)).ravel()
    width = len(slots)
    iteration = np.repeat(cycle, width).reshape(total, width)
    iteration[:, -1] += 1  # the discard belongs to the refill cycle after it
    recorder.span_table.add_block(
        {
            "resource": np.tile(np.asarray([s[0] for s in slots], dtype=np.int64), total)[keep],
            "start_ns": lo.ravel()[keep],
            "end_ns": hi.ravel()[keep],
            "kind": np.stack([s[1] for s in slots], axis=1).ravel()[keep].astype(np.int64),
            "label": np.tile(np.asarray([s[2] for s in slots], dtype=np.int64), total)[keep],
            "request": np.full(int(keep.sum()), request, dtype=np.int64),
            "iteration": iteration.ravel()[keep],
        },
        names,
    )
