"""Run labelled scenarios side by side and tabulate them, each against AR on the same hardware.

The speedup of a run is its tokens/s over AR (one GPU, no tensor parallelism) with the same model, hardware,
latency model, overheads and workload. When the runs include such an AR run it is reused; otherwise the
baseline is simulated once per distinct setting and not shown as a row.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spdsim.engine.result import Result
from spdsim.errors import SpdsimError
from spdsim.scenario.config import AcceptanceSpec, MethodSpec, Scenario
from spdsim.scenario.files import NamedScenario
from spdsim.scenario.memory import fits

TABLE_COLUMNS = (
    ("label", "run", "{}"),
    ("gpus", "GPUs", "{}"),
    ("tokens_per_s", "tokens/s", "{:,.1f}"),
    ("tpot_ms", "TPOT ms", "{:.3f}"),
    ("speedup", "speedup", "{:.2f}x"),
    ("mean_acceptance_length", "mean AL", "{:.2f}"),
    ("rho", "rho", "{:.3f}"),
    ("n_rho", "n*rho", "{:.2f}"),
    ("bubble_fraction", "bubble", "{:.1%}"),
)
# the table of serving workloads (their summaries carry these keys)
SERVING_COLUMNS = (
    ("label", "run", "{}"),
    ("gpus", "GPUs", "{}"),
    ("output_throughput", "tokens/s", "{:,.1f}"),
    ("request_throughput", "req/s", "{:.2f}"),
    ("median_ttft_ms", "TTFT p50 ms", "{:.2f}"),
    ("p99_ttft_ms", "TTFT p99 ms", "{:.2f}"),
    ("median_tpot_ms", "TPOT p50 ms", "{:.3f}"),
    ("p99_tpot_ms", "TPOT p99 ms", "{:.3f}"),
    ("median_itl_ms", "ITL p50 ms", "{:.3f}"),
    ("p99_itl_ms", "ITL p99 ms", "{:.3f}"),
    ("p99_e2el_ms", "E2E p99 ms", "{:.1f}"),
    ("request_goodput", "goodput req/s", "{:.2f}"),
)


# what ``summary["closed_form"]["scope"]`` says of a serving run's closed form (docs/metrics.md §3)
SERVING_CLOSED_FORM = (
    "one request of workload.prompt_tokens/new_tokens alone on the GPUs (no arrivals, queue or batch)"
)


@dataclass(frozen=True)
class RunOutcome:
    label: str
    scenario: Scenario
    result: Result  # the whole workload, busy totals only (no interval list)
    summary: dict[str, Any]
    traced: Result | None = None  # the traced request(s) again, with every busy interval (trace, timeline)
    traced_requests: tuple[int, ...] = ()  # which requests ``traced`` is for


def traced_scenario(scenario: Scenario, requests: int = 1) -> Scenario:
    """The same scenario cut to its first ``requests`` request(s).

    Per-request random streams are spawned from the seed by index, so request 0 here is request 0 of the full
    run, interval for interval; recording intervals for one request instead of all keeps `simulate` fast.
    """
    workload = dataclasses.replace(
        scenario.workload, num_requests=min(requests, scenario.workload.num_requests)
    )
    return dataclasses.replace(scenario, workload=workload)


TraceRequests = int | Sequence[int] | None


def chosen_requests(scenario: Scenario, trace_requests: TraceRequests, count: int) -> tuple[int, ...]:
    """The requests a run's trace holds: ``None`` every request of a serving run and the first of any other
    (docs/serving.md §5), an int the first that many, a sequence those indices; one-line error for a bad one."""
    if trace_requests is None:
        trace_requests = count if scenario.workload.serving else 1
    if isinstance(trace_requests, int):
        return tuple(range(min(max(trace_requests, 0), count)))
    chosen = tuple(sorted(set(trace_requests)))
    if chosen and not 0 <= chosen[0] <= chosen[-1] < count:
        raise SpdsimError(
            f"--trace-requests: request indices must be in [0, {count - 1}] (got {list(chosen)})"
        )
    return chosen


def parse_trace_requests(text: str) -> TraceRequests:
    """The CLI's ``--trace-requests``: ``all``, a count (the first N) or indices ``0,5,9``; one-line error."""
    if text.strip() == "all":
        return sys.maxsize
    try:
        chosen: int | tuple[int, ...] = (
            int(text) if "," not in text else tuple(int(part) for part in text.split(",") if part.strip())
        )
    except ValueError:
        chosen = ()
    if chosen == ():
        raise SpdsimError(f"--trace-requests: 'all', a count or request indices like 0,5,9 (got '{text}')")
    return check_trace_requests(chosen, "--trace-requests")


def check_trace_requests(chosen: TraceRequests, what: str) -> TraceRequests:
    """The trace's requests as the CLI and the API take them: a count or indices, none negative."""
    values = (chosen,) if isinstance(chosen, int) else tuple(chosen or ())
    if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in values):
        raise SpdsimError(f"{what}: a count or request indices like 0,5,9, none negative (got {chosen!r})")
    return chosen


def served_trace(result: Result, requests: Sequence[int]) -> Result:
    """A run's spans of ``requests`` and of the batched steps (request -1) that serve any of them: requests
    share the GPUs, so the run is traced whole and then cut, not re-run alone."""
    from spdsim.engine.table import Table

    spans = result.intervals
    if not isinstance(spans, Table) or not spans:
        return result
    chosen = np.asarray(sorted(requests), dtype=np.int64)
    owner = spans.column("request")
    keep = np.isin(owner, chosen)
    members = result.step_requests
    if isinstance(members, Table) and members:
        steps = members.column("step")[np.isin(members.column("request"), chosen)]
        keep |= (owner < 0) & np.isin(spans.column("iteration"), steps)
    return dataclasses.replace(result, intervals=spans.where(keep))


def baseline_scenario(scenario: Scenario) -> Scenario:
    """AR on one GPU with everything else (model, hardware, latency, overheads, workload, seed) unchanged."""
    return dataclasses.replace(scenario, method=MethodSpec(name="ar"), acceptance=AcceptanceSpec())


def _is_baseline(scenario: Scenario) -> bool:
    return scenario.method.name == "ar" and scenario.method.tensor_parallel == 1


def simulate_runs(runs: list[NamedScenario], *, trace_requests: TraceRequests = None) -> list[RunOutcome]:
    """Simulate every run (in order) and summarise it with the vLLM/pipeline metrics and its closed form.

    The requests ``chosen_requests`` picks (none: no trace) are simulated again with intervals recorded: a
    serving run whole, then cut to them; another run only up to the last of them (requests run alone).
    """
    from spdsim.engine.run import simulate

    whole = [  # serving runs traced whole: simulated once, with intervals, and cut afterwards
        bool(run.scenario.workload.serving)
        and bool(chosen_requests(run.scenario, trace_requests, run.scenario.workload.num_requests))
        for run in runs
    ]
    full = [
        simulate(run.scenario, record_intervals=True) if w else None
        for run, w in zip(runs, whole, strict=True)
    ]
    results = [
        dataclasses.replace(f, intervals=(), step_requests=())
        if f
        else simulate(run.scenario, record_intervals=False)
        for run, f in zip(runs, full, strict=True)
    ]
    baselines: dict[Scenario, Result] = {}
    for run, result in zip(runs, results, strict=True):
        if _is_baseline(run.scenario):
            baselines.setdefault(baseline_scenario(run.scenario), result)
    outcomes = []
    for run, result, recorded in zip(runs, results, full, strict=True):
        key = baseline_scenario(run.scenario)
        if key not in baselines:
            if not fits(key):  # the speedup's reference must be a setup that can exist
                model, hardware = key.model, key.hardware
                raise SpdsimError(
                    f"hardware.memory_gib: run '{run.label}' is measured against AR on one GPU, which does not "
                    f"fit {model.name if model else 'its model'} on {hardware.name if hardware else '?'} "
                    f"({hardware.memory_gib if hardware else 0:g} GiB per GPU)"
                )
            baselines[key] = simulate(key, record_intervals=False)
        traced = None
        chosen = chosen_requests(run.scenario, trace_requests, len(result.request_start_ns))
        if chosen and recorded is not None:
            traced = served_trace(recorded, chosen)
        elif chosen and chosen == tuple(range(len(chosen))):
            traced = simulate(traced_scenario(run.scenario, len(chosen)), record_intervals=True)
        elif chosen:
            cut = simulate(traced_scenario(run.scenario, chosen[-1] + 1), record_intervals=True)
            traced = served_trace(cut, chosen)
        summary = summarize_run(run, result, baselines[key])
        outcomes.append(
            RunOutcome(run.label, run.scenario, result, summary, traced, chosen if traced else ())
        )
    return outcomes


def summarize_run(run: NamedScenario, result: Result, baseline: Result) -> dict[str, Any]:
    """metrics.summarize plus the label, the acceptance preset and the closed-form prediction (a serving run's is
    labelled as the one-request prediction it is: ``closed_form.scope``)."""
    from spdsim.engine.closed_form import predict
    from spdsim.engine.metrics import summarize

    summary = {"label": run.label, **summarize(result, baseline)}
    summary["acceptance_preset"] = run.scenario.acceptance.preset
    prediction = predict(run.scenario)
    summary["closed_form"] = {
        "tokens_per_s": prediction.tokens_per_s,
        "acceptance_length": prediction.acceptance_length,
        "rho": prediction.rho,
        "n_rho": prediction.n_rho,
    }
    if run.scenario.workload.serving:  # the closed form knows no arrivals, queue or batch
        summary["closed_form"]["scope"] = SERVING_CLOSED_FORM
    return summary


def format_cell(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return pattern.format(value)


def render_table(outcomes: list[RunOutcome], title: str = ""):
    """A rich Table of the summaries (pipeline-only columns show '-' for other methods)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title) if title else None, header_style="bold")
    columns: tuple[tuple[str, str, str], ...] = TABLE_COLUMNS
    if any("request_throughput" in outcome.summary for outcome in outcomes):
        columns = SERVING_COLUMNS
    for key, header, _ in columns:
        table.add_column(header, justify="left" if key == "label" else "right", no_wrap=True)
    for outcome in outcomes:
        cells = (format_cell(outcome.summary.get(key), pattern) for key, _, pattern in columns)
        table.add_row(*(Text(cell) for cell in cells))  # Text: labels like "x [roofline]" are not markup
    return table


def render_validation(comparisons: Sequence[Any], title: str) -> tuple[Any, float]:
    """A rich Table of measured against predicted metrics (`spdsim validate`), fitted runs before held-out ones,
    and the largest |signed error| in % shown in it."""
    from rich.markup import escape
    from rich.table import Table

    from spdsim.calibration.replay import METRICS

    table = Table(title=escape(title), header_style="bold")
    worst = 0.0
    for header in ("run", "role", "metric", "measured", "predicted", "error %"):
        table.add_column(header)
    for role in ("fitted", "held-out"):
        for comparison in (c for c in comparisons if c.role == role):
            for metric in METRICS:
                error = comparison.error_pct(metric)
                if error is None:
                    continue
                worst = max(worst, abs(error))
                table.add_row(
                    escape(comparison.run),
                    role,
                    metric,
                    f"{comparison.measured[metric]:.4g}",
                    f"{comparison.predicted[metric]:.4g}",
                    f"{error:+.1f}",
                )
    return table, worst


def describe_setting(outcomes: list[RunOutcome]) -> str:
    """One line naming the shared model/hardware/latency of the runs (for the table title)."""
    settings = []
    for outcome in outcomes:
        s = outcome.scenario
        model = s.model.name if s.model else "-"
        hardware = s.hardware.name if s.hardware else "-"
        text = f"{model} on {hardware}, {s.latency.kind} latency, {s.workload.num_requests} x {s.workload.new_tokens} tokens"
        if text not in settings:
            settings.append(text)
    return "; ".join(settings)
