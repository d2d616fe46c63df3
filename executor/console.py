"""What ``spdsim exec run`` shows: the per-prompt progress bar (rich on stderr, as ``exec train-head`` and
``spdsim sweep`` draw theirs; one row per phase the schedules report, ``base.WARMUP``: the untimed warm-up
decodes, ``base.TIMED``: the prompts the summary measures), the summary table, and the one line that ends a
stalled run (``executor.host_sync.stall_watchdog``). The same bar serves ``exec run --distributed`` (fed by the
launcher from the decoding rank's reports) and each run of ``exec eval``.

Rich imports lazily, and this module never imports torch, so ``executor.cli`` stays light."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer

from spdsim.contract import EXIT_BUG, write_log

if TYPE_CHECKING:
    from executor.schedules.base import PromptProgress


@contextmanager
def prompt_bar(label: str, enabled: bool = True) -> Iterator[PromptProgress | None]:
    """Yields the `PromptProgress` to hand a schedule (None when disabled: the schedules then report nothing).

    The bar redraws only when a prompt reports (no auto-refresh thread), so drawing never takes the GIL inside
    a timed region; it stops on exit, before the caller prints anything else."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    tasks: dict[str, TaskID] = {}
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),  # stderr, as tqdm: the summary on stdout stays clean
        auto_refresh=False,
    )

    def report(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(f"{label}: {phase} prompts", total=total)
        bar.update(tasks[phase], completed=done, total=total, refresh=True)

    with bar:
        yield report


def print_summary(result: Any, tokenizer: Any) -> None:
    """The run's summary (realised α beside nominal, per state and position; phase medians) and the first
    prompt's text, on stdout."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    summary = result.summary()
    table = Table(title=f"{result.method} on {result.device}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, dict):
            continue
        table.add_row(escape(key), escape(f"{value:.4g}" if isinstance(value, float) else str(value)))
    for group in ("realised_by_state", "realised_by_position"):
        for label, rate in summary[group].items():
            if rate["alpha"] is not None:
                table.add_row(
                    escape(f"realised alpha, {group[12:]} {label}"),
                    f"{rate['alpha']:.4g} of {rate['checked']}",
                )
    for phase, by_state in result.phase_medians_us().items():
        for state, median_us in by_state.items():
            table.add_row(escape(f"phase {phase} [{state}] median us"), f"{median_us:.1f}")
    console = Console()
    console.print(table)
    first = result.prompts[0]
    text = escape(repr(tokenizer.decode(list(first.tokens))[:300]))
    console.print(f"[bold]{escape(first.prompt_id)}[/bold]: {text}")


def end_stalled_run(limit_s: float, waited_s: float) -> None:
    """The watchdog's report: the main thread is blocked in a device read that Python cannot interrupt, so this
    ends the process (before any run directory is written: nothing half-written is left)."""
    stacks = "\n".join(
        f"thread {ident}:\n{''.join(traceback.format_stack(frame))}"
        for ident, frame in sys._current_frames().items()
    )
    log = write_log(f"one device read waited {waited_s:.1f} s (--stall-s {limit_s:g})\n\n{stacks}")
    where = f"every thread's stack in {log}" if log else "no log file could be written"
    typer.echo(
        f"error: the device did not finish the decode work: one read of it waited {waited_s:.0f} s, past "
        f"--stall-s {limit_s:g} (a kernel that does not end; {where}); nothing was written",
        err=True,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_BUG)
