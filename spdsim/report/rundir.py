"""The run directory: config.json, tokens.csv, summary.json and trace.json (trace.json.gz: serving runs, large
traces), written atomically.

Written by ``spdsim.contract.files.write_dir``: a new directory (or spdsim's own one), built aside and renamed into
place, so a failure never leaves a half-written run directory and no file spdsim did not write is touched. Contents are deterministic (no timestamps, sorted keys), so the same
scenario gives byte-identical files. ``config.json`` is a scenario file: ``spdsim simulate config.json``
reproduces the run.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from pathlib import Path
from typing import Any

from spdsim import __version__
from spdsim.contract.chrome_trace import metadata_event, span_event, thread_events, trace_document
from spdsim.contract.files import write_dir
from spdsim.contract.rundir import SERVING_TRACE, SIMULATED_FILES, require_scenario
from spdsim.errors import SpdsimError
from spdsim.report.compare import RunOutcome
from spdsim.report.plots import resource_order
from spdsim.scenario.files import NamedScenario, scenario_to_run_dict

RUN_FILES = SIMULATED_FILES
TOKEN_COLUMNS = ("method", "request", "index", "commit_time_us", "iteration", "from_draft")
GZIP_ABOVE = 20_000_000  # characters of trace text past which it is written gzipped


def _dumps(data: Any) -> str:
    return json.dumps(_finite(data), indent=2, sort_keys=True, allow_nan=False, default=_jsonable) + "\n"


def _finite(data: Any) -> Any:
    """NaN/inf (e.g. rho of a non-pipeline method) become null: strict JSON readers reject NaN."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def config_document(runs: list[NamedScenario], name: str) -> dict[str, Any]:
    """The resolved scenario(s): a scenario file whose runs are complete (no names, no presets to resolve)."""
    return {
        "name": name,
        "description": f"resolved by spdsim {__version__}",
        "runs": [scenario_to_run_dict(run.label, run.scenario) for run in runs],
    }


def default_run_dir(runs: list[NamedScenario], name: str, root: str | Path = "runs") -> Path:
    """``runs/<name>-<hash of the resolved config>``: deterministic, and distinct for distinct scenarios."""
    digest = hashlib.sha256(_dumps(config_document(runs, name)).encode()).hexdigest()[:10]
    return Path(root) / f"{name}-{digest}"


def _us(time_ns: int) -> str:
    return f"{time_ns / 1000:.3f}"


def tokens_csv(outcomes: list[RunOutcome]) -> str:
    """Per-token rows of every run: method (run label), request, index, commit_time_us, iteration, from_draft."""
    lines = [",".join(TOKEN_COLUMNS)]
    for outcome in outcomes:
        label = _csv_field(outcome.label)
        for t in outcome.result.tokens:
            lines.append(
                f"{label},{t.request},{t.index},{_us(t.commit_ns)},{t.iteration},{int(t.from_draft)}"
            )
    return "\n".join(lines) + "\n"


def _csv_field(text: str) -> str:
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n') else text


def summary_document(outcomes: list[RunOutcome]) -> dict[str, Any]:
    return {"spdsim_version": __version__, "runs": [outcome.summary for outcome in outcomes]}


def chrome_trace(outcomes: list[RunOutcome]) -> str:
    """Chrome trace event JSON (Perfetto): one pid per run, one tid per resource, "X" spans in microseconds.

    The spans are those of each run's traced requests (``RunOutcome.traced``: the first request of a one-request
    run, every request of a serving run unless others are chosen; tokens.csv keeps every token of every
    request). A batched step's spans name the requests it carries (``args.requests``); a serving run also gets
    one track per traced request: waiting and prefill from when it is sent, then its decode (docs/serving.md §5).
    """
    events: list[str] = []
    for pid, outcome in enumerate(outcomes, start=1):
        events.append(metadata_event("process_name", pid, 0, {"name": outcome.label}))
        events.append(metadata_event("process_sort_index", pid, None, {"sort_index": pid}))
        traced = outcome.traced
        intervals = traced.intervals if traced is not None else ()
        tids: dict[str, int] = {}
        for resource in sorted({iv.resource for iv in intervals}, key=resource_order):
            tids[resource] = len(tids) + 1
            events.extend(thread_events(pid, tids[resource], resource))
        carried = _step_requests(traced)
        names: dict[str, str] = {}
        for iv in intervals:
            name = names.get(iv.label) or names.setdefault(iv.label, json.dumps(iv.label))
            args = f'"request":{iv.request},"iteration":{iv.iteration}'
            if iv.request < 0 and iv.iteration in carried:
                args = f'"requests":{carried[iv.iteration]},"step":{iv.iteration}'
            events.append(_span(name, iv.kind, iv.start_ns, iv.end_ns, pid, tids[iv.resource], args))
        if traced is not None and outcome.scenario.workload.serving:
            _request_tracks(events, pid, len(tids), traced, outcome.traced_requests)
    return trace_document(events)


def _step_requests(traced) -> dict[int, str]:
    """Batched step -> the JSON list of the requests it carries (empty for one-request servers)."""
    from spdsim.engine.table import Table

    members = traced.step_requests if traced is not None else ()
    if not isinstance(members, Table) or not members:
        return {}
    carried: dict[int, list[int]] = {}
    for step, request in zip(
        members.column("step").tolist(), members.column("request").tolist(), strict=True
    ):
        carried.setdefault(step, []).append(request)
    return {step: json.dumps(sorted(requests), separators=(",", ":")) for step, requests in carried.items()}


def _request_tracks(events: list[str], pid: int, first_tid: int, traced, requests: tuple[int, ...]) -> None:
    """One track per traced request: sent -> decode start ("wait + prefill"), decode start -> last token
    ("decode", with its token count and TTFT)."""
    from spdsim.engine.metrics import request_latencies_ns

    latencies = request_latencies_ns(traced)
    first, last, tokens = latencies["first"], latencies["last"], latencies["tokens"]
    for position, request in enumerate(requests):
        tid = first_tid + 1 + position
        events.extend(thread_events(pid, tid, f"request {request}"))
        sent, start = traced.request_sent_ns[request], traced.request_start_ns[request]
        if start > sent:
            events.append(_span('"wait + prefill"', "request", sent, start, pid, tid, f'"request":{request}'))
        if tokens[request]:
            ttft = (int(first[request]) - sent) / 1e6
            args = f'"request":{request},"tokens":{int(tokens[request])},"ttft_ms":{ttft:.3f}'
            events.append(_span('"decode"', "request", start, int(last[request]), pid, tid, args))


def _span(name_json: str, kind: str, start_ns: int, end_ns: int, pid: int, tid: int, args: str) -> str:
    """A span of the simulator's integer nanoseconds, in the trace's microseconds."""
    return span_event(name_json, kind, start_ns / 1000, (end_ns - start_ns) / 1000, pid, tid, args)


def trace_file(outcomes: list[RunOutcome]) -> tuple[str, bytes | str]:
    """The trace's file name and content: ``trace.json.gz`` (gzip, no name or time in its header: the same run
    gives the same bytes; Perfetto opens it as is) for a serving run or a trace over ``GZIP_ABOVE`` bytes, else
    ``trace.json``. Serving traces hold every request, tens of MB of text that gzip shrinks about tenfold."""
    text = chrome_trace(outcomes)
    if len(text) > GZIP_ABOVE or any(o.scenario.workload.serving for o in outcomes):
        return SERVING_TRACE, gzip.compress(text.encode(), compresslevel=6, mtime=0)
    return "trace.json", text


def write_run_dir(out_dir: str | Path, outcomes: list[RunOutcome], name: str, force: bool = True) -> Path:
    """The four run files for ``outcomes`` (see module docstring); ``force``: may rewrite spdsim's own directory."""
    runs = [NamedScenario(o.label, o.scenario) for o in outcomes]
    trace_name, trace = trace_file(outcomes)
    return write_dir(
        out_dir,
        {
            "config.json": lambda: _dumps(config_document(runs, name)),
            "tokens.csv": lambda: tokens_csv(outcomes),
            "summary.json": lambda: _dumps(summary_document(outcomes)),
            trace_name: lambda: trace,
        },
        force=force,
    )


def run_config_path(target: str | Path) -> Path:
    """The scenario file behind a run directory (its config.json), or ``target`` itself if it is a file."""
    target = Path(target)
    if target.is_dir():
        return require_scenario(target)
    if not target.exists():
        raise SpdsimError(f"no such run directory or scenario file '{target}'")
    return target
