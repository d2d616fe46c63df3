"""Run labelled scenarios side by side and tabulate them, each against AR on the same hardware.

The speedup of a run is its tokens/s over AR (one GPU, no tensor parallelism) with the same model, hardware,
latency model, overheads and workload. When the runs include such an AR run it is reused; otherwise the
baseline is simulated once per distinct setting and not shown as a row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from spdsim.engine.result import Result
from spdsim.scenario.config import AcceptanceSpec, MethodSpec, Scenario
from spdsim.scenario.files import NamedScenario

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


@dataclass(frozen=True)
class RunOutcome:
    label: str
    scenario: Scenario
    result: Result  # the whole workload, busy totals only (no interval list)
    summary: dict[str, Any]
    traced: Result | None = None  # the first request(s) again, with every busy interval (trace, timeline)


def traced_scenario(scenario: Scenario, requests: int = 1) -> Scenario:
    """The same scenario cut to its first ``requests`` request(s).

    Per-request random streams are spawned from the seed by index, so request 0 here is request 0 of the full
    run, interval for interval; recording intervals for one request instead of all keeps `simulate` fast.
    """
    workload = dataclasses.replace(
        scenario.workload, num_requests=min(requests, scenario.workload.num_requests)
    )
    return dataclasses.replace(scenario, workload=workload)


def served_trace(result: Result, requests: int) -> Result:
    """A serving run's spans of its first ``requests`` requests and of the batched steps (request -1) until the
    last of them finishes: requests share the GPUs, so the run is traced whole and then cut, not re-run alone."""
    from spdsim.engine.table import Table

    spans = result.intervals
    if not isinstance(spans, Table) or not spans:
        return result
    owner = spans.column("request")
    tokens = result.tokens
    ends = (
        [t.commit_ns for t in tokens if t.request < requests]
        if not isinstance(tokens, Table)
        else (tokens.column("commit_ns")[tokens.column("request") < requests].tolist())
    )
    horizon = max(ends, default=result.end_ns)
    keep = ((owner >= 0) & (owner < requests)) | ((owner < 0) & (spans.column("start_ns") < horizon))
    return dataclasses.replace(result, intervals=spans.where(keep))


def baseline_scenario(scenario: Scenario) -> Scenario:
    """AR on one GPU with everything else (model, hardware, latency, overheads, workload, seed) unchanged."""
    return dataclasses.replace(scenario, method=MethodSpec(name="ar"), acceptance=AcceptanceSpec())


def _is_baseline(scenario: Scenario) -> bool:
    return scenario.method.name == "ar" and scenario.method.tensor_parallel == 1


def simulate_runs(runs: list[NamedScenario], *, trace_requests: int = 1) -> list[RunOutcome]:
    """Simulate every run (in order) and summarise it with the vLLM/pipeline metrics and its closed form.

    ``trace_requests`` > 0 also simulates the first request(s) of each run with intervals recorded.
    """
    from spdsim.engine.run import simulate

    results = [simulate(run.scenario, record_intervals=False) for run in runs]
    baselines: dict[Scenario, Result] = {}
    for run, result in zip(runs, results, strict=True):
        if _is_baseline(run.scenario):
            baselines.setdefault(baseline_scenario(run.scenario), result)
    outcomes = []
    for run, result in zip(runs, results, strict=True):
        key = baseline_scenario(run.scenario)
        if key not in baselines:
            baselines[key] = simulate(key, record_intervals=False)
        traced = None
        if trace_requests > 0 and run.scenario.workload.serving:
            traced = served_trace(simulate(run.scenario, record_intervals=True), trace_requests)
        elif trace_requests > 0:
            traced = simulate(traced_scenario(run.scenario, trace_requests), record_intervals=True)
        summary = summarize_run(run, result, baselines[key])
        outcomes.append(RunOutcome(run.label, run.scenario, result, summary, traced))
    return outcomes


def summarize_run(run: NamedScenario, result: Result, baseline: Result) -> dict[str, Any]:
    """metrics.summarize plus the label, the acceptance preset and the closed-form prediction."""
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
