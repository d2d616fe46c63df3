"""Run directory of a measured executor run: config.json, tokens.csv, summary.json, trace.csv (the acceptance
TRACE format of the team brief, which spdsim's trace replay reads as is), cycles.csv (per-cycle phase times) and
timeline.json (the measured phases as a Chrome trace: open it in Perfetto; `timeline_json`).

Written atomically (built in a temporary sibling, renamed into place): no half-written directory on failure.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from executor.schedules.common import RunResult
from spdsim.contract import (
    MEASURED_FILES,
    TRACE_COLUMNS,
    SpdsimError,
    write_atomically,
    write_file,
    write_text_file,
)
from spdsim.contract.chrome_trace import metadata_event, span_event, thread_events, trace_document
from spdsim.contract.extras import is_parquet, require_parquet

TOKEN_COLUMNS = (
    "method",
    "request",
    "prompt_id",
    "index",
    "token",
    "commit_time_us",
    "iteration",
    "from_draft",
)
RUN_FILES = MEASURED_FILES


def _json(data) -> str:
    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(data), indent=2, sort_keys=True, allow_nan=False) + "\n"


def _csv(header, rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def tokens_csv(result: RunResult) -> str:
    rows = []
    for request, run in enumerate(result.prompts):
        for index, token in enumerate(run.tokens):
            rows.append(
                (
                    result.method,
                    request,
                    run.prompt_id,
                    index,
                    token,
                    f"{run.token_times_us[index]:.3f}",
                    run.token_cycles[index],
                    int(run.token_from_draft[index]),
                )
            )
    return _csv(TOKEN_COLUMNS, rows)


def trace_rows(result: RunResult) -> list[dict]:
    return [row for run in result.prompts for row in run.trace]


def trace_csv(result: RunResult) -> str:
    return _csv(TRACE_COLUMNS, ([row[c] for c in TRACE_COLUMNS] for row in trace_rows(result)))


def cycles_csv(result: RunResult) -> str:
    """One row per decode-loop iteration; one `<phase>_us` column per phase seen in the run (empty if absent)."""
    phases = sorted({name for run in result.prompts for cycle in run.cycles for name in cycle.phases_us})
    header = ("request", "prompt_id", "cycle", "state", "tokens", *(f"{p}_us" for p in phases))
    rows = []
    for request, run in enumerate(result.prompts):
        for cycle in run.cycles:
            times = [f"{cycle.phases_us[p]:.3f}" if p in cycle.phases_us else "" for p in phases]
            rows.append((request, run.prompt_id, cycle.index, cycle.state, cycle.tokens, *times))
    return _csv(header, rows)


# Track order of the phases in timeline.json; other phases come after, by name.
PHASE_ORDER = ("draft", "acceptance_head", "stage", "verify", "step")


def _phase_order(name: str) -> tuple[int, int, str]:
    """Drafter first, then stages in numeric order, verify, AR step; a phase's number sorts numerically."""
    for rank, prefix in enumerate(PHASE_ORDER):
        if name.startswith(prefix):
            digits = name[len(prefix) :]
            return rank, int(digits) if digits.isdigit() else -1, name
    return len(PHASE_ORDER), 0, name


def timeline_json(result: RunResult) -> str:
    """Chrome trace event JSON (Perfetto) of the measured phases, built from their measured start times.

    One process per prompt (pid = request + 1, since pid 0 is special to Perfetto; named by its prompt_id), one
    thread per phase (named; a phase has the same tid in every process), one "X" span per measured interval
    (``PromptRun.phase_spans``: a phase timed twice in a cycle gives two spans) with ``args`` {cycle, state}.
    ts and dur are µs from the prompt's earliest phase start, on the clock that timed the phases (CUDA events on
    a GPU, perf_counter on the CPU), so every prompt starts at 0. Nothing is laid out: a prompt without spans (a
    result made before they were kept) gets its process name and no spans, and phases not timed as intervals
    here (the distributed controller's host phases and its remote stages' forward times) are in cycles.csv only.

    Token commits are left out: ``token_times_us`` are host perf_counter times since the prefill started (with
    synthetic re-anchors taken off), while on a GPU the spans are device-event times, and relating the two clocks
    would need a host-device sync in the timed loop; tokens.csv has the commit times. The same result gives the
    same bytes.
    """
    names = sorted({span[1] for run in result.prompts for span in run.phase_spans}, key=_phase_order)
    tids = {name: tid for tid, name in enumerate(names, start=1)}
    events: list[str] = []
    for request, run in enumerate(result.prompts):
        pid = request + 1
        events.append(metadata_event("process_name", pid, 0, {"name": run.prompt_id}))
        events.append(metadata_event("process_sort_index", pid, 0, {"sort_index": pid}))
        for name in sorted({span[1] for span in run.phase_spans}, key=_phase_order):
            events.extend(thread_events(pid, tids[name], name))
        states = {cycle.index: cycle.state for cycle in run.cycles}
        for cycle, name, start_us, dur_us in sorted(
            run.phase_spans, key=lambda span: (span[2], tids[span[1]], span[0], span[3])
        ):
            args = f'"cycle":{cycle},"state":{json.dumps(states.get(cycle))}'
            events.append(span_event(json.dumps(name), "phase", start_us, dur_us, pid, tids[name], args))
    return trace_document(events)


def write_trace(result: RunResult, path: str | Path) -> Path:
    """The acceptance trace alone, as CSV or (by suffix .parquet) Parquet."""
    path = Path(path)
    if is_parquet(path):
        import pandas as pd

        require_parquet("Parquet output")
        frame = pd.DataFrame(trace_rows(result), columns=list(TRACE_COLUMNS))
        write_file(path, lambda temporary: frame.to_parquet(temporary, index=False))
    elif path.suffix.lower() == ".csv":
        write_text_file(path, trace_csv(result))
    else:
        raise SpdsimError(f"trace file {str(path)!r} must end in .csv or .parquet")
    return path


def write_run_dir(
    result: RunResult, out_dir: str | Path, extra_config: dict | None = None, force: bool = True
) -> Path:
    """Write the six run files for `result` into `out_dir`: a new directory, or (``force``) spdsim's own one,
    whose run files are replaced (``spdsim.contract.files.write_dir``)."""
    lengths = {run.prompt_id: run.prompt_tokens for run in result.prompts}
    config = {**result.config, "device": result.device, "prompt_tokens": lengths, **(extra_config or {})}
    return write_atomically(
        out_dir,
        {
            "config.json": lambda: _json(config),
            "tokens.csv": lambda: tokens_csv(result),
            "summary.json": lambda: _json(result.summary()),
            "trace.csv": lambda: trace_csv(result),
            "cycles.csv": lambda: cycles_csv(result),
            "timeline.json": lambda: timeline_json(result),
        },
        force=force,
    )
