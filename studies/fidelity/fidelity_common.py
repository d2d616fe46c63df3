"""What the fidelity reports share (`fidelity.py`, `fidelity_x4.py`): TPOT without one-time iterations, and the
predicted-against-measured TPOT scatter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from spdsim.calibration.fit import one_time_limit_us
from spdsim.calibration.measured_runs import load_run

DATA = Path(__file__).resolve().parent / "results"


def warm_metrics(name: str, data: Path = DATA) -> dict[str, float]:
    """TPOT / tokens/s with one-time iterations (> 3x the run's p10) replaced by the median of the others of
    their state."""
    run = load_run(data / name)
    cycles = run.cycle_us
    states = np.array([s for p in run.prompts for s in p.cycle_states])
    stalls = cycles > one_time_limit_us(run)
    excess = 0.0
    for state in np.unique(states):  # SPD refill cycles are shorter than saturated ones: replace like by like
        mine = states == state
        typical = float(np.median(cycles[mine & ~stalls])) if (mine & ~stalls).any() else 0.0
        excess += float(np.sum(cycles[mine & stalls] - typical))
    decode_us = run.decode_us - excess
    return {
        "warm_tpot_ms": decode_us / 1e3 / run.decode_tokens,
        "warm_tokens_per_s": run.decode_tokens / (decode_us / 1e6),
        "one_time_iterations": int(stalls.sum()),
        "one_time_ms": excess / 1e3,
    }


def tpot_scatter(ax, validation: pd.DataFrame, roles, title: str, warm: bool = False) -> None:
    """Predicted against measured TPOT per run (log axes) with the ±5% band; ``warm`` adds hollow markers at the
    TPOT without one-time iterations."""
    for role, marker in roles:
        part = validation[validation.role == role]
        ax.scatter(part.measured_tpot_ms, part.predicted_tpot_ms, marker=marker, label=f"{role}: raw run")
        if warm:
            ax.scatter(
                part.warm_tpot_ms,
                part.predicted_tpot_ms,
                marker=marker,
                facecolors="none",
                edgecolors="k",
                label=f"{role}: one-time costs removed",
            )
        for _, row in part.iterrows():
            ax.annotate(
                row.run,
                (row.measured_tpot_ms, row.predicted_tpot_ms),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    top = max(validation.measured_tpot_ms.max(), validation.predicted_tpot_ms.max()) * 1.1
    ax.plot([0, top], [0, top], "k:", lw=1)
    ax.fill_between([0, top], [0, 0.95 * top], [0, 1.05 * top], color="green", alpha=0.1, label="±5%")
    ax.set(xlabel="measured TPOT (ms)", ylabel="predicted TPOT (ms)", title=title, xscale="log", yscale="log")
    ax.legend(fontsize=7)
