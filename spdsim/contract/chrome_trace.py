"""Chrome trace event JSON (Perfetto): the one writer of both run-directory kinds' traces, a simulated run's
``trace.json`` (``spdsim.report.rundir``) and a measured run's ``timeline.json`` (``executor.rundir``).

Events are written as text in a fixed key order, so the same run gives the same bytes."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


def metadata_event(kind: str, pid: int, tid: int | None, args: dict[str, Any]) -> str:
    """An "M" event (``process_name``, ``thread_sort_index``, ...); ``tid`` None: a process-wide one."""
    event: dict[str, Any] = {"name": kind, "ph": "M", "pid": pid}
    if tid is not None:
        event["tid"] = tid
    event["args"] = args
    return json.dumps(event)


def thread_events(pid: int, tid: int, name: str) -> tuple[str, str]:
    """A track's name and its place (tracks sort by tid)."""
    return (
        metadata_event("thread_name", pid, tid, {"name": name}),
        metadata_event("thread_sort_index", pid, tid, {"sort_index": tid}),
    )


def span_event(
    name_json: str, category: str, ts_us: float, dur_us: float, pid: int, tid: int, args: str
) -> str:
    """An "X" span; ``name_json`` is the name already JSON-quoted, ``args`` the inside of its args object."""
    return (
        f'{{"name":{name_json},"cat":"{category}","ph":"X","ts":{ts_us:.3f},"dur":{dur_us:.3f},'
        f'"pid":{pid},"tid":{tid},"args":{{{args}}}}}'
    )


def trace_document(events: Iterable[str]) -> str:
    """The file: every event on a line of its own."""
    return '{"displayTimeUnit":"ms","traceEvents":[\n' + ",\n".join(events) + "\n]}\n"
