"""The ``spdsim`` command line: a thin typer layer over the library.

Usage:
    spdsim simulate                                   # the embedded default: SPD n=8 vs AR and the baselines
    spdsim simulate my.toml --set method.num_stages=16 --out runs/mine
    spdsim compare --method spd --method eagle3 --set acceptance.alpha=0.9
    spdsim sweep my.toml --grid method.num_stages=2,4,8,16 --grid acceptance.alpha=0.5:0.95:10 --out s.csv
    spdsim timeline runs/mine --out timeline.png --method spd
    spdsim list presets

User mistakes end with one line ``error: <field>: <what is allowed>`` and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from spdsim.boundary import EXIT_INTERRUPTED, EXIT_USER, fail, user_errors
from spdsim.errors import SpdsimError
from spdsim.plugins import HELP, load_commands

app = typer.Typer(
    name="spdsim",
    help="Simulate Speculative Pipeline Decoding and speculative-decoding baselines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _name, _group in load_commands().items():  # the executor's `exec`, when its extra is installed
    app.add_typer(_group, name=_name, help=HELP.get(_name))

ScenarioArg = Annotated[
    Path | None, typer.Argument(help="Scenario file (TOML/JSON) or run directory; default: embedded default.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override KEY=VALUE, e.g. method.num_stages=16 (repeatable)."),
]
ProfileOpt = Annotated[
    Path | None, typer.Option("--profile", help="Profile bundle JSON, or `spdsim list profiles` name.")
]
AcceptanceOpt = Annotated[
    str | None,
    typer.Option(
        "--acceptance",
        help="Preset for the runs of its method (sets its knobs and model), or MODEL/DATASET: "
        "move every run's preset of that model to that dataset.",
    ),
]


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False, width=160)


ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Model for every run: an embedded name (`spdsim list models`), a HF config.json or a directory "
        "holding one.",
    ),
]


def _named_overrides(hardware: str | None, model: str | None) -> list[str]:
    """``--hardware`` / ``--model`` as the overrides they stand for (JSON strings: a path stays one value)."""
    pairs = (("hardware", hardware), ("model", model))
    return [f"{key}={json.dumps(value)}" for key, value in pairs if value]


ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force", help="Rewrite a run directory spdsim made: replaces its run files, keeps others."
    ),
]
WORKERS_MAX = 1024
VALIDATION_WARN_PCT = 50.0  # a signed error beyond this means the profile does not describe the runs


def _check_workers(workers: int) -> int:
    if not 0 <= workers <= WORKERS_MAX:
        raise SpdsimError(f"--workers: must be 0 (one per CPU core) to {WORKERS_MAX} (got {workers})")
    return workers


def _scenario_paths(targets: list[Path] | None) -> list[Path]:
    from spdsim.report.rundir import run_config_path

    return [run_config_path(t) for t in targets or []]


def _run_name(paths: list[Path]) -> str:
    if not paths:
        return "default"
    stem = paths[0].parent.name if paths[0].name == "config.json" else paths[0].stem
    return stem if len(paths) == 1 else f"{stem}-and-{len(paths) - 1}"


def _simulate_and_report(
    paths,
    overrides,
    profile,
    acceptance,
    methods,
    out,
    write_default: bool,
    waterfall: bool = False,
    force: bool = False,
    trace_requests: str | None = None,
) -> None:
    from spdsim.contract.files import check_out_dir, own_files
    from spdsim.report.compare import describe_setting, parse_trace_requests, render_table, simulate_runs
    from spdsim.report.rundir import default_run_dir, write_run_dir
    from spdsim.scenario.files import load_runs

    if out is not None:
        check_out_dir(out, force)
    runs = load_runs(paths, overrides or (), acceptance, str(profile) if profile else None, methods or ())
    name = _run_name(paths)
    if out is None and write_default:
        out = default_run_dir(runs, name)
        # the default directory is named by a hash of the resolved scenario: spdsim's own one holds this very run
        force = own_files(out) is not None
        check_out_dir(out, force)
    chosen = parse_trace_requests(trace_requests) if trace_requests else None
    outcomes = simulate_runs(runs, trace_requests=chosen)
    console = _console()
    console.print(render_table(outcomes, title=describe_setting(outcomes)))
    if waterfall:
        from spdsim.report.waterfall import render_waterfalls, speedup_waterfall

        spd_runs = [run for run in runs if run.scenario.method.name == "spd"]
        console.print(render_waterfalls([speedup_waterfall(r.label, r.scenario) for r in spd_runs]))
    if out is not None:
        written = write_run_dir(out, outcomes, name, force=force)
        console.print(f"run directory: {written}", markup=False)


@app.command()
@user_errors
def simulate(
    scenario: ScenarioArg = None,
    set_: SetOpt = None,
    profile: ProfileOpt = None,
    acceptance: AcceptanceOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="New run directory (default: runs/<name>-<hash>).")
    ] = None,
    hardware: Annotated[
        str | None,
        typer.Option(
            "--hardware", help="Hardware preset for every run (`spdsim list hardware`); shows the waterfall."
        ),
    ] = None,
    waterfall: Annotated[
        bool, typer.Option("--waterfall", help="Also print where SPD's speedup goes (topology, host, ...).")
    ] = False,
    force: ForceOpt = False,
    model: ModelOpt = None,
    trace_requests: Annotated[
        str | None,
        typer.Option(
            "--trace-requests",
            help="Requests in the trace: all, a count or indices 0,5,9 (default: all of a serving run, else 1).",
        ),
    ] = None,
) -> None:
    """Simulate a scenario (all its runs), print the comparison table and write a run directory."""
    paths = _scenario_paths([scenario] if scenario else None)
    overrides = _named_overrides(hardware, model) + list(set_ or [])
    _simulate_and_report(
        paths,
        overrides,
        profile,
        acceptance,
        None,
        out,
        write_default=True,
        waterfall=waterfall or bool(hardware),
        force=force,
        trace_requests=trace_requests,
    )


@app.command()
@user_errors
def compare(
    scenarios: Annotated[list[Path] | None, typer.Argument(help="Scenario files or run directories.")] = None,
    method: Annotated[
        list[str] | None, typer.Option("--method", help="Keep runs of this method or label (repeatable).")
    ] = None,
    set_: SetOpt = None,
    profile: ProfileOpt = None,
    acceptance: AcceptanceOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Also write a new run directory.")] = None,
    force: ForceOpt = False,
    model: ModelOpt = None,
    hardware: Annotated[
        str | None, typer.Option("--hardware", help="Hardware for every run (`spdsim list hardware`).")
    ] = None,
) -> None:
    """Compare methods or configurations side by side, each against AR on the same hardware."""
    overrides = _named_overrides(hardware, model) + list(set_ or [])
    _simulate_and_report(
        _scenario_paths(scenarios),
        overrides,
        profile,
        acceptance,
        method,
        out,
        write_default=False,
        force=force,
    )


@app.command()
@user_errors
def sweep(
    scenario: Annotated[Path, typer.Argument(help="Scenario file (its runs are swept together).")],
    grid: Annotated[
        list[str] | None, typer.Option("--grid", help="KEY=v1,v2,... or KEY=start:stop:count (repeatable).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output table: .csv or .parquet.")] = None,
    set_: SetOpt = None,
    workers: Annotated[int, typer.Option("--workers", help="Processes (0: one per CPU core).")] = 0,
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", help="Dask scheduler address (tcp://host:8786): run on that cluster."),
    ] = None,
) -> None:
    """Simulate every point of a grid over scenario fields and write one row per point and run."""
    from spdsim.drivers.sweep import check_scheduler, check_table_out, run_sweep, write_table

    if out is None:
        raise SpdsimError("--out: give the output table, FILE.csv or FILE.parquet")
    check_table_out(out)
    if not grid:
        raise SpdsimError("--grid: give at least one KEY=VALUES axis, e.g. method.num_stages=2,4,8,16")
    _check_workers(workers)
    if scheduler is not None:
        check_scheduler(scheduler)
    paths = _scenario_paths([scenario])
    frame = run_sweep(
        paths[0], grid, overrides=set_ or (), workers=workers, progress=True, scheduler=scheduler
    )
    write_table(frame, out)
    _console().print(f"{len(frame)} rows -> {out}", markup=False)


@app.command()
@user_errors
def timeline(
    target: Annotated[Path, typer.Argument(help="Run directory or scenario file.")],
    out: Annotated[Path, typer.Option("--out", help="Picture: .png or .svg.")],
    method: Annotated[
        str | None, typer.Option("--method", help="Run label or method (default: first pipeline).")
    ] = None,
    window_ms: Annotated[
        str | None, typer.Option("--window-ms", help="START:END or LENGTH in ms from the first decode step.")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Draw a run's schedule as a Gantt chart (resources x time; busy, bubble, flushed, comm, draft)."""
    from spdsim.contract.files import check_out_file, write_file
    from spdsim.report.plots import parse_window_ms, pick_run, plot_timeline
    from spdsim.scenario.files import load_runs

    check_out_file(out, (".png", ".svg"))
    window = parse_window_ms(window_ms)
    run = pick_run(load_runs(_scenario_paths([target]), set_ or ()), method)
    from spdsim.engine.run import simulate
    from spdsim.report.compare import traced_scenario

    # the default window lies in the first request, which alone is quick to simulate with every interval
    scenario = run.scenario if window else traced_scenario(run.scenario)
    result = simulate(scenario)

    def draw(temporary: Path) -> None:
        plot_timeline(result, temporary, window_ms=window, title=run.label)

    write_file(out, draw)
    _console().print(f"timeline of {run.label} -> {out}", markup=False)


@app.command()
@user_errors
def optimize(
    scenario: ScenarioArg = None,
    acceptance: AcceptanceOpt = None,
    set_: SetOpt = None,
    max_gpus: Annotated[int, typer.Option("--max-gpus", help="GPU budget (0: no limit).")] = 0,
    stages: Annotated[str, typer.Option("--stages", help="Pipeline depths n: LOW:HIGH or a list.")] = "2:16",
    spec_layers: Annotated[
        str, typer.Option("--spec-layers", help="Drafter depths L_s: LOW:HIGH or a list.")
    ] = "1:6",
    alpha_model: Annotated[
        str,
        typer.Option(
            "--alpha-model", help="fixed: the scenario's alpha; fit: alpha(n, L_s) from SPD presets."
        ),
    ] = "fixed",
    finalists: Annotated[
        int, typer.Option("--finalists", help="Designs simulated after closed-form pruning.")
    ] = 10,
    workers: Annotated[int, typer.Option("--workers", help="Processes (0: one per CPU core).")] = 1,
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the finalists: .csv or .parquet.")
    ] = None,
) -> None:
    """Search SPD designs (n, L_s, stage split, drafter placement) for the scenario's hardware, model, acceptance."""
    import pandas as pd

    from spdsim.drivers.optimize import (
        SearchSpace,
        load_base_scenario,
        parse_int_range,
        reference_design,
        render_result,
        search,
    )
    from spdsim.drivers.sweep import check_table_out, write_table

    if max_gpus < 0 or max_gpus == 1:
        raise SpdsimError(f"--max-gpus: SPD needs at least 2 GPUs, or 0 for no limit (got {max_gpus})")
    if out is not None:
        check_table_out(out)
    _check_workers(workers)
    space = SearchSpace(
        stages=parse_int_range(stages, "--stages"),
        spec_layers=parse_int_range(spec_layers, "--spec-layers"),
        max_gpus=max_gpus,
    )
    paths = _scenario_paths([scenario] if scenario else None)
    base = load_base_scenario(str(paths[0]) if paths else None, set_ or (), acceptance)
    result = search(
        base,
        space,
        alpha_model=alpha_model,
        finalists=finalists,
        reference=reference_design(base),
        workers=workers,
    )
    console = _console()
    title = f"{base.model.name if base.model else '-'} on {base.hardware.name if base.hardware else '-'}, "
    title += (
        f"acceptance {base.acceptance.preset or base.acceptance.kind}; AR {result.ar_tokens_per_s:,.1f} tok/s"
    )
    console.print(title, markup=False)
    console.print(render_result(result, finalists))
    best, reference = result.best, result.reference
    assert reference is not None  # search() is given the reference design
    console.print(
        f"best: {best.design.label} ({best.gpus} GPUs), {best.simulated_speedup:.2f}x over AR; "
        f"{len(result.candidates)} designs priced, {len(result.finalists)} simulated; "
        f"ref = the SPD authors' n=8, L_s=3 on its own GPU ({reference.design.split} split)"
        + (f" ({reference.gpus} GPUs: over the budget)" if max_gpus and reference.gpus > max_gpus else ""),
        markup=False,
    )
    if out is not None:
        write_table(pd.DataFrame.from_records(result.finalist_rows()), out)
        console.print(f"finalists -> {out}", markup=False)


@app.command("list")
@user_errors
def list_(
    what: Annotated[
        str | None, typer.Argument(help="methods | hardware | models | presets (default: all).")
    ] = None,
) -> None:
    """List methods, hardware profiles, model shapes and acceptance presets with their sources."""
    from rich.markup import escape
    from rich.table import Table

    from spdsim.methods import catalog as method_catalog
    from spdsim.scenario.presets import CATALOG_SECTIONS, catalog

    sections = ("methods", *CATALOG_SECTIONS)
    if what is not None and what not in sections:
        raise SpdsimError(f"list: unknown section '{what}' (allowed: {', '.join(sections)})")
    for section in sections if what is None else (what,):
        headers, rows = method_catalog() if section == "methods" else catalog(section)
        table = Table(title=section, header_style="bold", show_lines=False)
        for header in headers:
            table.add_column(header, overflow="fold", max_width=90 if header == "source" else None)
        for row in rows:
            table.add_row(*(escape(str(cell)) for cell in row))
        _console().print(table)


@app.command()
@user_errors
def calibrate(
    bundles: Annotated[list[Path], typer.Argument(help="Profile bundles (executor profile) to merge.")],
    out: Annotated[Path, typer.Option("--out", help="Calibrated profile JSON to write.")],
    run: Annotated[
        list[Path] | None,
        typer.Option("--run", help="Measured run directory to fit per-iteration costs from (repeatable)."),
    ] = None,
    fit: Annotated[
        bool, typer.Option("--fit", help="Also store a few-coefficient fit (latency kind 'fitted').")
    ] = False,
) -> None:
    """Fit the latency model to executor measurements and write a profile."""
    from spdsim.calibration.fit import calibrate as run_calibrate
    from spdsim.calibration.fit import write_profile
    from spdsim.contract.files import check_out_file

    check_out_file(out, (".json",))
    profile = run_calibrate(list(bundles), list(run or ()), fit=fit)
    write_profile(profile, out)
    phases = ", ".join(f"{k} ({len(v)})" for k, v in sorted(profile["phases"].items()))
    _console().print(f"profile -> {out}: {phases}", markup=False)


@app.command()
@user_errors
def validate(
    runs: Annotated[list[Path], typer.Argument(help="Measured executor run directories.")],
    profile: Annotated[Path, typer.Option("--profile", help="Calibrated profile (spdsim calibrate).")],
    baseline: Annotated[
        Path | None,
        typer.Option("--baseline", help="AR run on the same prompts and hardware (for speedups)."),
    ] = None,
    kind: Annotated[str, typer.Option("--kind", help="Latency model: measured | fitted.")] = "measured",
    out: Annotated[Path | None, typer.Option("--out", help="Also write the comparison as CSV.")] = None,
) -> None:
    """Replay measured runs (same trace, prompt and generation lengths) and report signed % errors."""
    from spdsim.calibration.replay import validate as run_validate
    from spdsim.contract.files import check_out_file
    from spdsim.report.compare import render_validation

    if out is not None:
        check_out_file(out, (".csv",))
    comparisons = run_validate(list(runs), profile, baseline, kind)
    for comparison in comparisons:
        if comparison.warning:
            typer.echo(comparison.warning, err=True)
    table, worst = render_validation(comparisons, f"validation against {profile} ({kind})")
    _console().print(table)
    if worst > VALIDATION_WARN_PCT:
        typer.echo(
            f"warning: the largest error is {worst:.0f}% (over {VALIDATION_WARN_PCT:.0f}%): the profile does not "
            "describe these runs (other hardware, model or dtype? CPU timings are noisy); do not trust "
            "predictions from it",
            err=True,
        )
    if out is not None:
        import pandas as pd

        from spdsim.contract.files import write_file

        frame = pd.DataFrame([c.row() for c in comparisons])
        write_file(out, lambda temporary: frame.to_csv(temporary, index=False))
        _console().print(f"comparison -> {out}", markup=False)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: click usage errors become one line and exit code 2, like SpdsimError; Ctrl-C
    outside a command exits 130; anything else goes through the error boundary (spdsim.boundary)."""
    try:
        code = app(args=argv, prog_name="spdsim", standalone_mode=False)
    except typer.Abort as exc:  # typer's click turns a Ctrl-C outside a command into Abort
        if isinstance(exc.__context__, KeyboardInterrupt) or isinstance(exc.__cause__, KeyboardInterrupt):
            typer.echo("interrupted: stopped, nothing was written", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # typer's (vendored click) usage errors
        message = " ".join((exc.format_message() if hasattr(exc, "format_message") else str(exc)).split())
        if message:  # empty after no_args_is_help, which already printed the help
            typer.echo(f"error: {message}", err=True)
        sys.exit(EXIT_USER)
    except (Exception, KeyboardInterrupt) as exc:
        sys.exit(fail(exc).exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
