"""Pictures of results: the schedule as a Gantt chart, and speedup curves.

matplotlib is imported inside the functions (Agg backend) so that ``spdsim simulate`` never pays for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spdsim.engine.result import BUSY, COMM, DRAFT, FLUSHED, Result
from spdsim.errors import SpdsimError
from spdsim.scenario.config import PIPELINE_METHODS
from spdsim.scenario.files import NamedScenario

KIND_STYLE = {  # drawing order = dict order: later kinds on top
    BUSY: ("#3b75af", "busy"),
    DRAFT: ("#55a868", "draft"),
    COMM: ("#8c6bb1", "comm"),
    FLUSHED: ("#d9534f", "flushed (discarded)"),
}
BUBBLE_COLOR = "#efefef"
DEFAULT_WINDOW_ITERATIONS = 30


def resource_order(resource: str) -> tuple[int, int, str]:
    """Controller and drafters first, then stages / GPUs in numeric order."""
    for rank, prefix in enumerate(("controller", "drafter", "little", "draft", "stage", "gpu", "target")):
        if resource.startswith(prefix):
            digits = "".join(ch for ch in resource[len(prefix) :] if ch.isdigit())
            return rank, int(digits) if digits else 0, resource
    return 9, 0, resource


def parse_window_ms(text: str | None) -> tuple[float, float] | None:
    """``"2:7.5"`` -> (2.0, 7.5); ``"5"`` -> (0.0, 5.0); None -> None (automatic window)."""
    if text is None:
        return None
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        raise SpdsimError(f"--window-ms: expected START:END or LENGTH in ms, got {text!r}") from None
    if len(parts) == 1:
        parts = [0.0, parts[0]]
    if len(parts) != 2 or not parts[0] < parts[1] or parts[0] < 0:
        raise SpdsimError(f"--window-ms: expected 0 <= START < END, got {text!r}")
    return parts[0], parts[1]


def pick_run(runs: Sequence[NamedScenario], method: str | None) -> NamedScenario:
    """The run named by label or method; by default the first pipeline run (else the first run)."""
    if method is None:
        return next((r for r in runs if r.scenario.method.name in PIPELINE_METHODS), runs[0])
    for run in runs:
        if run.label == method:
            return run
    for run in runs:
        if run.scenario.method.name == method:
            return run
    labels = ", ".join(r.label for r in runs)
    raise SpdsimError(f"--method: no run labelled or of method '{method}' (runs: {labels})")


def _default_window_ns(result: Result, origin_ns: int) -> tuple[int, int]:
    ends = [
        iv.end_ns for iv in result.intervals if iv.request == 0 and iv.iteration < DEFAULT_WINDOW_ITERATIONS
    ]
    return origin_ns, max(ends) if ends else result.end_ns


def timeline_window_ns(result: Result, window_ms: tuple[float, float] | None) -> tuple[int, int]:
    """Absolute [start, end) in ns: ``window_ms`` after the first decode step, or the first 30 iterations."""
    origin_ns = result.request_start_ns[0] if result.request_start_ns else 0
    if window_ms is None:
        return _default_window_ns(result, origin_ns)
    return origin_ns + int(window_ms[0] * 1e6), origin_ns + int(window_ms[1] * 1e6)


def timeline_spans(result: Result, start_ns: int, end_ns: int) -> dict[str, dict[str, list[tuple[int, int]]]]:
    """resource -> kind -> [(start_ns, duration_ns)] clipped to the window (what the Gantt chart draws)."""
    spans: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for resource in sorted({iv.resource for iv in result.intervals}, key=resource_order):
        spans[resource] = {kind: [] for kind in KIND_STYLE}
    for iv in result.intervals:
        if iv.end_ns > start_ns and iv.start_ns < end_ns:
            begin, finish = max(iv.start_ns, start_ns), min(iv.end_ns, end_ns)
            spans[iv.resource].setdefault(iv.kind, []).append((begin, finish - begin))
    return spans


def plot_timeline(
    result: Result,
    out: str | Path,
    window_ms: tuple[float, float] | None = None,
    title: str = "",
) -> Path:
    """Gantt chart of resource busy spans; idle time inside the window shows as bubble (light grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not result.intervals:
        raise SpdsimError(
            "timeline: the run recorded no busy intervals (simulate with record_intervals=True)"
        )
    origin_ns = result.request_start_ns[0] if result.request_start_ns else 0
    start_ns, end_ns = timeline_window_ns(result, window_ms)
    spans = timeline_spans(result, start_ns, end_ns)
    rows = {name: i for i, name in enumerate(reversed(list(spans)))}
    commits_row = len(rows)

    def ms(t_ns: float) -> float:
        return (t_ns - origin_ns) / 1e6

    fig, ax = plt.subplots(figsize=(14, 1.6 + 0.42 * (len(rows) + 1)))
    for y in rows.values():
        ax.broken_barh(
            [(ms(start_ns), (end_ns - start_ns) / 1e6)], (y - 0.4, 0.8), color=BUBBLE_COLOR, zorder=1
        )
    for zorder, (kind, (color, _)) in enumerate(KIND_STYLE.items(), start=2):
        for resource, y in rows.items():
            bars = [(ms(begin), width / 1e6) for begin, width in spans[resource].get(kind, [])]
            if bars:
                ax.broken_barh(
                    bars, (y - 0.4, 0.8), facecolor=color, edgecolor="white", linewidth=0.4, zorder=zorder
                )
    commits = [t for t in result.tokens if start_ns <= t.commit_ns <= end_ns]
    drafted = [ms(t.commit_ns) for t in commits if t.from_draft]
    own = [ms(t.commit_ns) for t in commits if not t.from_draft]
    ax.plot(drafted, [commits_row] * len(drafted), "v", color="#2a7a3b", markersize=7, zorder=8)
    ax.plot(own, [commits_row] * len(own), "o", color="#222222", markersize=5, zorder=8)
    ax.set_yticks([*rows.values(), commits_row], [*rows.keys(), "tokens"])
    ax.set_ylim(-0.7, commits_row + 0.7)
    ax.set_xlim(ms(start_ns), ms(end_ns))
    ax.set_xlabel("time since first decode step (ms)")
    ax.grid(axis="x", color="#cccccc", linewidth=0.5, zorder=0)
    ax.set_axisbelow(True)
    handles: list[Any] = [Patch(color=color, label=label) for color, label in KIND_STYLE.values()]
    handles.append(Patch(facecolor=BUBBLE_COLOR, edgecolor="#bbbbbb", label="bubble (idle)"))
    handles.append(
        plt.Line2D([], [], marker="v", linestyle="", color="#2a7a3b", label="token: accepted draft")
    )
    handles.append(plt.Line2D([], [], marker="o", linestyle="", color="#222222", label="token: target's own"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)
    scenario = result.scenario
    subtitle = f"{scenario.method.name}, {result.gpus} GPU(s)"
    if scenario.model is not None and scenario.hardware is not None:
        subtitle += f", {scenario.model.name} on {scenario.hardware.name}"
    ax.set_title(f"{title or scenario.method.name}: {subtitle}", loc="left")
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130, metadata={"Software": None} if out.suffix == ".png" else {"Date": None})
    plt.close(fig)
    return out


def plot_lines(
    frame: Any,
    x: str,
    y: str,
    hue: str,
    out: str | Path,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    styles: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """One line per value of ``hue`` (e.g. speedup against n per overhead); a pandas DataFrame in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, group in frame.groupby(hue, sort=False):
        group = group.sort_values(x)
        ax.plot(
            group[x], group[y], marker="o", markersize=3.5, label=str(name), **(styles or {}).get(name, {})
        )
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title, loc="left")
    ax.grid(color="#dddddd", linewidth=0.6)
    ax.legend(frameon=False, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130, metadata={"Software": None} if out.suffix == ".png" else {"Date": None})
    plt.close(fig)
    return out
