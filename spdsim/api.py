"""The public Python API: simulate, compare and sweep a scenario from a notebook or a script.

A scenario is given as a path (scenario file or run directory), a dict (a scenario file's content), a
:class:`~spdsim.scenario.config.Scenario` (or a list of them, compared side by side), or ``None`` for the embedded
default. ``overrides`` are the CLI's ``--set`` strings or a dict ``{"method.num_stages": 16}``. Scenarios are
validated where they are built, as the CLI validates them; a mistake raises :class:`spdsim.errors.SpdsimError`
with one line naming the field.

    >>> import spdsim
    >>> spdsim.simulate(overrides={"method.num_stages": 16}).summary  # one row per run
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spdsim.scenario.config import Scenario

if TYPE_CHECKING:
    import pandas as pd

    from spdsim.report.compare import RunOutcome

ScenarioLike = str | Path | Mapping[str, Any] | Scenario | None
Overrides = Mapping[str, Any] | Sequence[str] | None


@dataclass(frozen=True)
class Simulation:
    """What :func:`simulate` and :func:`compare` return: one outcome per run, each against AR on its hardware."""

    outcomes: tuple[RunOutcome, ...]

    @property
    def summary(self) -> pd.DataFrame:
        """One row per run: label, method, tokens/s, TPOT, speedup, acceptance, bubbles, closed form (flattened)."""
        import pandas as pd

        return pd.json_normalize([outcome.summary for outcome in self.outcomes])

    @property
    def scenarios(self) -> dict[str, Scenario]:
        """Run label -> the resolved scenario it ran."""
        return {outcome.label: outcome.scenario for outcome in self.outcomes}

    def write(self, out: str | Path, name: str = "api", force: bool = False) -> Path:
        """Write the run directory (``config.json``, ``tokens.csv``, ``summary.json``, ``trace.json`` or
        ``trace.json.gz``)."""
        from spdsim.contract.files import check_out_dir
        from spdsim.report.rundir import write_run_dir

        check_out_dir(out, force)
        return write_run_dir(out, list(self.outcomes), name, force=force)


def _override_strings(overrides: Overrides) -> tuple[str, ...]:
    if overrides is None:
        return ()
    if isinstance(overrides, Mapping):
        return tuple(f"{key}={json.dumps(value)}" for key, value in overrides.items())
    return tuple(overrides)


def _value_text(value: Any) -> str:
    """A value as the ``--set`` parser reads it back (TOML-like: numbers, booleans, lists, bare strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    if isinstance(value, str):
        return value
    return repr(value)


def _sources(scenario: ScenarioLike | Sequence[Scenario]) -> list[str | Path | dict[str, Any]]:
    from spdsim.report.rundir import run_config_path
    from spdsim.scenario.files import scenario_to_run_dict

    if scenario is None:
        return []
    if isinstance(scenario, Scenario):
        scenario = [scenario]
    if isinstance(scenario, (str, Path)):
        return [run_config_path(scenario)]
    if isinstance(scenario, Mapping):
        return [dict(scenario)]
    runs = [scenario_to_run_dict(f"run{i}", s) for i, s in enumerate(scenario)]
    return [{"runs": runs}] if len(runs) > 1 else [{k: v for k, v in runs[0].items() if k != "label"}]


def simulate(
    scenario: ScenarioLike | Sequence[Scenario] = None,
    overrides: Overrides = None,
    *,
    methods: Sequence[str] = (),
    acceptance: str | None = None,
    profile: str | Path | None = None,
    trace_requests: int | Sequence[int] | None = None,
) -> Simulation:
    """Simulate every run of ``scenario`` (the embedded default if ``None``), each against AR; see the module doc.

    ``methods`` keeps the runs of those methods or labels, ``acceptance`` applies a preset (``spdsim list
    presets``), ``profile`` prices with a measured profile bundle: the CLI's ``--method``, ``--acceptance`` and
    ``--profile``; ``trace_requests`` the requests the trace holds (``--trace-requests``: a count or indices;
    ``None``: every request of a serving run, the first of any other).
    """
    from spdsim.report.compare import check_trace_requests, simulate_runs
    from spdsim.scenario.files import load_runs

    check_trace_requests(trace_requests, "trace_requests")
    runs = load_runs(
        _sources(scenario),
        _override_strings(overrides),
        acceptance,
        str(profile) if profile else None,
        tuple(methods),
    )
    return Simulation(tuple(simulate_runs(runs, trace_requests=trace_requests)))


def compare(
    methods: Sequence[str] = (),
    scenario: ScenarioLike | Sequence[Scenario] = None,
    overrides: Overrides = None,
    *,
    acceptance: str | None = None,
    profile: str | Path | None = None,
) -> pd.DataFrame:
    """The comparison table of ``spdsim compare`` as a DataFrame: one row per run (``methods`` selects runs)."""
    return simulate(scenario, overrides, methods=methods, acceptance=acceptance, profile=profile).summary


def sweep(
    scenario: str | Path | Mapping[str, Any] | Scenario | None = None,
    grid: Mapping[str, Sequence[Any]] | Sequence[str] = (),
    overrides: Overrides = None,
    *,
    workers: int = 1,
) -> pd.DataFrame:
    """Simulate every point of ``grid`` (``{"method.num_stages": [2, 4, 8]}`` or ``--grid`` strings): one row
    per point and run, in grid order, as ``spdsim sweep`` writes it."""
    from spdsim.drivers.sweep import build_tasks, sweep_tasks
    from spdsim.errors import SpdsimError
    from spdsim.scenario.files import default_scenario_path, read_scenario_file

    if isinstance(grid, Mapping):
        grid = [f"{key}={','.join(_value_text(v) for v in values)}" for key, values in grid.items()]
    if not grid:
        raise SpdsimError("grid: give at least one axis, e.g. {'method.num_stages': [2, 4, 8, 16]}")
    sources = _sources(scenario) or [default_scenario_path()]
    raw = sources[0] if isinstance(sources[0], dict) else read_scenario_file(sources[0])
    return sweep_tasks(build_tasks(raw, list(grid), _override_strings(overrides)), workers, False, None)
