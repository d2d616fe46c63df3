"""The CLI's per-prompt progress bar for ``spdsim exec run``: rich on stderr (as ``exec train-head`` and
``spdsim sweep`` draw theirs), one row per phase the schedules report (``base.WARMUP``: the untimed warm-up
decodes; ``base.TIMED``: the prompts the summary measures).

Rich imports lazily, and this module never imports torch, so ``executor.cli`` stays light."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

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
