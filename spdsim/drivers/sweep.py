"""Grid sweeps: every point of a grid over scenario fields, simulated in parallel, one row per point and run.

Rows come back in grid order whatever the number of processes (results are placed by index), so a sweep is
deterministic. Each point is validated before any process starts, so a bad value fails fast with one line.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from spdsim.errors import SpdsimError
from spdsim.report.compare import baseline_scenario
from spdsim.scenario.config import Scenario
from spdsim.scenario.files import (
    apply_overrides,
    build_scenario,
    default_label,
    expand_runs,
    parse_value,
    read_scenario_file,
)
from spdsim.scenario.presets import load_presets

TABLE_SUFFIXES = (".csv", ".parquet")
_CHUNK = 8
MAX_GRID_POINTS = 100_000  # a sweep of that many points takes hours on a laptop; more is a typo
SCHEDULER_SCHEMES = ("tcp", "tls", "inproc", "ucx", "ws", "wss")


def check_scheduler(address: str) -> str:
    """A Dask scheduler address must be SCHEME://HOST[:PORT] (checked before any wait for a connection)."""
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in SCHEDULER_SCHEMES or not rest.strip() or any(c.isspace() for c in rest):
        raise SpdsimError(
            f"--scheduler: expected SCHEME://HOST:PORT such as tcp://host:8786 "
            f"(schemes: {', '.join(SCHEDULER_SCHEMES)}), got {address!r}"
        )
    return address


def parse_grid(text: str) -> tuple[str, list[Any]]:
    """``KEY=v1,v2,...`` or ``KEY=start:stop:count`` (count evenly spaced values, both ends included)."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
        raise SpdsimError(f"--grid: expected KEY=v1,v2 or KEY=start:stop:count, got {text!r}")
    if ":" in values and "," not in values:
        parts = values.split(":")
        try:
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        except (ValueError, IndexError, OverflowError):
            raise SpdsimError(f"--grid {key}: expected start:stop:count, got {values!r}") from None
        if len(parts) != 3 or count < 1:
            raise SpdsimError(f"--grid {key}: expected start:stop:count with count >= 1, got {values!r}")
        if count > MAX_GRID_POINTS:
            raise SpdsimError(f"--grid {key}: count {count} exceeds {MAX_GRID_POINTS:,} points")
        if not (math.isfinite(start) and math.isfinite(stop)):
            raise SpdsimError(f"--grid {key}: start and stop must be finite, got {values!r}")
        if count == 1:
            return key, [start]
        step = (stop - start) / (count - 1)
        return key, [round(start + i * step, 12) for i in range(count)]
    parsed = parse_value(values.strip())
    return key, list(parsed) if isinstance(parsed, list) else [parsed]


def grid_points(axes: Sequence[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """The Cartesian product in the order given (last axis fastest)."""
    keys = [key for key, _ in axes]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise SpdsimError(f"--grid: key '{repeated[0]}' given twice; give all its values in one --grid")
    total = math.prod(len(values) for _, values in axes)
    if total > MAX_GRID_POINTS:
        raise SpdsimError(f"--grid: {total:,} points exceed the limit of {MAX_GRID_POINTS:,}")
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(v for _, v in axes))]


def _override_text(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


def build_tasks(
    raw: dict[str, Any], grid: Sequence[str], overrides: Sequence[str] = ()
) -> list[tuple[dict[str, Any], str, Scenario]]:
    """(point, run label, validated Scenario) for every grid point x scenario run."""
    presets = load_presets()
    axes = [parse_grid(text) for text in grid]
    runs = expand_runs(raw)
    tasks = []
    for point in grid_points(axes):
        point_overrides = [*overrides, *(_override_text(k, v) for k, v in point.items())]
        for label, run in runs:
            scenario = build_scenario(apply_overrides(run, point_overrides), presets)
            tasks.append((point, label or default_label(scenario.method), scenario))
    return tasks


def simulate_row(scenario: Scenario) -> dict[str, Any]:
    """Summary metrics of one scenario plus its closed form (no intervals recorded: sweeps need speed)."""
    from spdsim.engine.closed_form import predict
    from spdsim.engine.metrics import summarize
    from spdsim.engine.run import simulate

    row = summarize(simulate(scenario, record_intervals=False))
    prediction = predict(scenario)
    row["closed_form_tokens_per_s"] = prediction.tokens_per_s
    row["closed_form_acceptance_length"] = prediction.acceptance_length
    row["closed_form_rho"] = prediction.rho
    return row


def _ignore_sigint() -> None:
    """Worker initializer: Ctrl-C goes to the whole process group; only the parent handles it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now (their results are no longer wanted)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=2)


def _simulate_chunk(chunk: list[tuple[int, Scenario]]) -> list[tuple[int, dict[str, Any]]]:
    return [(index, simulate_row(scenario)) for index, scenario in chunk]


def simulate_many(
    scenarios: Sequence[Scenario], workers: int = 0, progress: bool = False, scheduler: str | None = None
) -> list[dict[str, Any]]:
    """simulate_row for each scenario, over ``workers`` processes (0: one per core; 1: in this process).

    ``scheduler``: address of a Dask distributed scheduler; the same chunks then run on that cluster instead.
    """
    workers = workers or os.cpu_count() or 1
    indexed = list(enumerate(scenarios))
    chunks = [indexed[i : i + _CHUNK] for i in range(0, len(indexed), _CHUNK)]
    rows: list[dict[str, Any] | None] = [None] * len(indexed)
    with _progress(progress, len(indexed)) as advance:
        if scheduler:
            from spdsim.drivers.dask_backend import run_chunks_on_dask

            for index, row in run_chunks_on_dask(scheduler, _simulate_chunk, chunks, advance):
                rows[index] = row
        elif workers == 1 or len(chunks) <= 1:
            for chunk in chunks:
                for index, row in _simulate_chunk(chunk):
                    rows[index] = row
                advance(len(chunk))
        else:
            pool = ProcessPoolExecutor(max_workers=min(workers, len(chunks)), initializer=_ignore_sigint)
            try:
                futures = [pool.submit(_simulate_chunk, chunk) for chunk in chunks]
                for future in as_completed(futures):
                    done = future.result()
                    for index, row in done:
                        rows[index] = row
                    advance(len(done))
            except BaseException:  # Ctrl-C or a failed point: stop the workers, do not finish the grid
                _stop_pool(pool)
                raise
            pool.shutdown(wait=True)
    return rows  # type: ignore[return-value]


class _progress:
    """A rich progress bar (or a no-op) whose ``advance(n)`` counts simulated scenarios."""

    def __init__(self, enabled: bool, total: int):
        self.enabled = enabled
        self.total = total

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._bar.__enter__()
        task = self._bar.add_task("simulating", total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.__exit__(*exc)
        return False


def sweep_tasks(
    tasks: Sequence[tuple[dict[str, Any], str, Scenario]],
    workers: int = 0,
    progress: bool = False,
    scheduler: str | None = None,
):
    """A DataFrame with one row per task: the point's values, the run label, metrics, speedup vs AR."""
    import pandas as pd

    baselines = list(dict.fromkeys(baseline_scenario(scenario) for _, _, scenario in tasks))
    rows = simulate_many([*baselines, *(scenario for _, _, scenario in tasks)], workers, progress, scheduler)
    baseline_tps = {b: row["tokens_per_s"] for b, row in zip(baselines, rows[: len(baselines)], strict=True)}
    records = []
    for (point, label, scenario), row in zip(tasks, rows[len(baselines) :], strict=True):
        base = baseline_tps[baseline_scenario(scenario)]
        record = {**point, "label": label, **{k: float("nan") if v is None else v for k, v in row.items()}}
        record["speedup"] = row["tokens_per_s"] / base if base > 0 else float("nan")
        records.append(record)
    return pd.DataFrame.from_records(records)


def run_sweep(
    path: str | Path,
    grid: Sequence[str],
    overrides: Sequence[str] = (),
    workers: int = 0,
    progress=False,
    scheduler: str | None = None,
):
    """Sweep a scenario file over ``--grid`` axes (see parse_grid); ``scheduler``: a Dask scheduler address."""
    tasks = build_tasks(read_scenario_file(path), grid, overrides)
    return sweep_tasks(tasks, workers, progress, scheduler)


def check_table_out(out: str | Path) -> Path:
    """The output table's path checked before any work: its suffix, the directory rules, and for Parquet the
    ``parquet`` extra (one-line errors)."""
    from spdsim.contract.extras import is_parquet, require_parquet
    from spdsim.contract.files import check_out_file

    out = check_out_file(out, TABLE_SUFFIXES)
    if is_parquet(out):
        require_parquet("Parquet output")
    return out


def write_table(frame, out: str | Path) -> Path:
    """Write CSV or Parquet atomically (``spdsim.contract.files.write_file``: temporary sibling, then rename)."""
    from spdsim.contract.files import write_file

    out = check_table_out(out)
    if out.suffix == ".csv":
        return write_file(out, lambda temporary: frame.to_csv(temporary, index=False))
    return write_file(out, lambda temporary: frame.to_parquet(temporary, index=False))
