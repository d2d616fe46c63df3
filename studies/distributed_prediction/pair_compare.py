"""Prediction against measurement for the two-GPU run (issue 18): the committed prediction, made before any 2-GPU
run from single-GPU phases (``predict.py``), beside what ``run_pair.py`` measured, as signed errors of TPOT,
saturated-cycle time (median, p90) and speedup over compiled AR; plus the bandwidth figures, the lossless line and
what was not reached. α = 0.95 and every qwen3-4b row are marked held out: no calibration may use them.

The prediction file is picked by the GPU the runs name (an H100 pair: ``results/h100/predictions.json``; an H200
pair: ``results/predictions.json``), or given. A number the file lacks is said to be missing, never made up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pair_steps import describe, held_out, own_gpu_drafter, spd_name

HERE = Path(__file__).resolve().parent
PREDICTIONS = {
    "H100": HERE / "results" / "h100" / "predictions.json",
    "H200": HERE / "results" / "predictions.json",
}
NO_P90 = "not in prediction file"
NO_ROW = "no prediction row"


@dataclass(frozen=True)
class Cell:
    """One compared quantity: predicted and measured (None: absent, with ``why``)."""

    predicted: float | None
    measured: float | None
    why_predicted: str = NO_ROW
    why_measured: str = "not measured"

    @property
    def error(self) -> float | None:
        """Signed relative error of the prediction: (predicted - measured) / measured."""
        if self.predicted is None or self.measured is None or self.measured == 0:
            return None
        return (self.predicted - self.measured) / self.measured

    def columns(self, digits: int = 3) -> list[str]:
        pred = f"{self.predicted:.{digits}f}" if self.predicted is not None else self.why_predicted
        meas = f"{self.measured:.{digits}f}" if self.measured is not None else self.why_measured
        err = f"{self.error:+.1%}" if self.error is not None else "—"
        return [text.replace("|", "/") for text in (pred, meas, err)]  # a reason must not split the table


def pick_predictions(gpu: str, given: Path | None = None) -> tuple[Path, str]:
    """The prediction file for the runs' GPU and a note on how it was chosen."""
    if given is not None:
        return given, f"given: {given}"
    for key, path in PREDICTIONS.items():
        if key in gpu.upper():
            return path, f"{key} pair ({gpu})"
    return PREDICTIONS["H100"], f"no H100/H200 named (GPU '{gpu}'): the H100 file, for the table's shape only"


def load_predictions(path: Path) -> dict[tuple[str, float], dict]:
    """The file's rows for SPD n = 2 with the drafter co-located, by (model, α)."""
    rows = json.loads(path.read_text())["rows"]
    return {
        (r["model"], float(r["alpha"])): r
        for r in rows
        if r.get("n") == 2 and r.get("placement") == "colocated"
    }


def run_gpu(out: Path) -> str:
    """The GPU the runs of ``out`` name in their config.json ("cpu" for a dry run; "" if no run)."""
    for config in sorted(out.glob("*/config.json")):
        gpu = json.loads(config.read_text()).get("gpu")
        if gpu:
            return str(gpu)
    return ""


def measured_spd(run_dir: Path) -> dict[str, float] | None:
    """TPOT, realised α and the saturated cycles' median and p90 (ms) of one SPD run directory."""
    from spdsim.calibration.measured_runs import load_run

    if not (run_dir / "summary.json").is_file():
        return None
    summary = json.loads((run_dir / "summary.json").read_text())
    run = load_run(run_dir)
    cycles = [
        c for p in run.prompts for c, s in zip(p.cycle_us, p.cycle_states, strict=True) if s == "saturated"
    ]
    return {
        "tpot_ms": float(summary["tpot_ms"]),
        "realised_alpha": summary.get("realised_alpha"),
        "cycle_median_ms": float(np.median(cycles)) / 1e3 if cycles else float("nan"),
        "cycle_p90_ms": float(np.percentile(cycles, 90)) / 1e3 if cycles else float("nan"),
        "saturated_cycles": len(cycles),
    }


def measured_tpot(run_dir: Path) -> float | None:
    path = run_dir / "summary.json"
    return float(json.loads(path.read_text())["tpot_ms"]) if path.is_file() else None


def compare(
    out: Path, models: tuple[str, ...], alphas: tuple[float, ...], predictions: dict, why: dict[str, str]
) -> list[dict[str, Any]]:
    """One row per model's AR and per (model, α) SPD run; ``why``: step name -> why it has no result."""
    rows = []
    for tag in models:
        ar_ms = measured_tpot(out / f"ar_{tag}")
        rows.append(ar_row(tag, ar_ms, predictions, why))
        rows += [spd_row(out, tag, alpha, ar_ms, predictions.get((tag, alpha)), why) for alpha in alphas]
    return rows


def value(row: dict | None, key: str) -> float | None:
    """``row[key]``, None where the row or the key is absent."""
    return None if row is None or row.get(key) is None else float(row[key])


def ar_row(tag: str, ar_ms: float | None, predictions: dict, why: dict[str, str]) -> dict[str, Any]:
    """The compiled single-GPU AR: every prediction row of the model carries the same predicted "ar_ms"."""
    predicted = next((r for (m, _), r in predictions.items() if m == tag), None)
    missing = why.get(f"ar-{tag}", "not measured")
    return {
        "model": tag,
        "alpha": None,
        "held_out": held_out(tag),
        "tpot": Cell(value(predicted, "ar_ms"), ar_ms, why_measured=missing),
    }


def spd_row(
    out: Path, tag: str, alpha: float, ar_ms: float | None, pred: dict | None, why: dict[str, str]
) -> dict[str, Any]:
    meas = measured_spd(out / spd_name(tag, alpha))
    missing = why.get(f"spd-{tag}", "not measured")
    speedup = ar_ms / meas["tpot_ms"] if meas and ar_ms else None
    return {
        "model": tag,
        "alpha": alpha,
        "realised_alpha": value(meas, "realised_alpha"),
        "held_out": held_out(tag, alpha),
        "tpot": Cell(value(pred, "tpot_ms"), value(meas, "tpot_ms"), why_measured=missing),
        "cycle_median": Cell(
            value(pred, "saturated_cycle_ms"), value(meas, "cycle_median_ms"), why_measured=missing
        ),
        "cycle_p90": Cell(
            value(pred, "saturated_cycle_p90_ms"),
            value(meas, "cycle_p90_ms"),
            why_predicted=NO_P90 if pred else NO_ROW,
            why_measured=missing,
        ),
        "speedup": Cell(
            value(pred, "speedup_vs_compiled_ar"),
            speedup,
            why_measured=missing if not meas else why.get(f"ar-{tag}", "no AR run"),
        ),
    }


def table(rows: list[dict]) -> list[str]:
    head = (
        "| model | run | α nominal | α realised | held out | TPOT pred (ms) | TPOT meas (ms) | TPOT err "
        "| cycle median pred (ms) | meas | err | cycle p90 pred (ms) | meas | err | speedup pred | meas | err |"
    )
    lines = [head, "|" + "---|" * 17]
    for r in rows:
        held = "**held out**" if r["held_out"] else "no"
        if r["alpha"] is None:
            cells = [r["model"], "AR (1 GPU)", "—", "—", held, *r["tpot"].columns(), *["—"] * 9]
        else:
            realised = f"{r['realised_alpha']:.3f}" if r["realised_alpha"] is not None else "—"
            cells = [r["model"], "SPD n=2 co-located", f"{r['alpha']}", realised, held, *r["tpot"].columns()]
            cells += [*r["cycle_median"].columns(), *r["cycle_p90"].columns(), *r["speedup"].columns(2)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def bandwidth_lines(out: Path, models: tuple[str, ...]) -> list[str]:
    lines = ["## Bandwidth first", ""]
    p2p = out / "p2p.json"
    if p2p.is_file():
        data = json.loads(p2p.read_text())
        lines += [
            f"Point-to-point between the two ranks ({data['backend']}, ping-pong, one-way = round trip / 2):",
            "",
            "| message | bytes | one-way median (µs) | p10 | p90 | GB/s |",
            "|---|---|---|---|---|---|",
        ]
        for e in data["entries"]:
            lines.append(
                f"| {e['label']} | {e['bytes']} | {e['median_us']:.1f} | {e['p10_us']:.1f} | {e['p90_us']:.1f} "
                f"| {e['gbps']:.2f} |"
            )
    else:
        lines.append("p2p: not measured.")
    lines += [
        "",
        "| model | AR step median (ms) | p10 | p90 | weights GB/s | copy GB/s | of copy |",
        "|---|---|---|---|---|---|---|",
    ]
    for tag in models:
        path = out / f"ar_{tag}.json"
        if not path.is_file():
            lines.append(f"| {tag} | not measured | | | | | |")
            continue
        a = json.loads(path.read_text())
        step = a["step"]
        lines.append(
            f"| {tag} | {step['median_us'] / 1e3:.3f} | {step['p10_us'] / 1e3:.3f} | {step['p90_us'] / 1e3:.3f} "
            f"| {a['achieved_weight_gbps']:.0f} | {a['copy_bandwidth_gbps']:.0f} | {a['fraction_of_copy']:.1%} |"
        )
    return lines


def lossless_text(out: Path, why: dict[str, str]) -> str:
    path = out / "lossless.json"
    if not path.is_file():
        return f"Lossless (SmolLM2-135M, float32, trained head, n = 2): not run ({why.get('smol-spd', 'no result')})."
    d = json.loads(path.read_text())
    verdict = "identical" if d["identical"] == d["prompts"] else "NOT identical"
    return (
        f"Lossless ({d['model']}, {d['dtype']}, trained head, n = 2): {d['identical']}/{d['prompts']} prompts "
        f"token-{verdict} to AR (acceptance rate {d['acceptance_rate']:.3f})."
    )


def header(gpu: str, path: Path, note: str) -> list[str]:
    shown = path.relative_to(HERE) if path.is_relative_to(HERE) else path
    dry = ["**Dry run (--tiny): CPU, gloo, tiny stand-in models; the numbers say nothing about GPUs.**", ""]
    return [
        f"# Issue 18: SPD n = 2 on two GPUs against its prediction ({gpu})",
        "",
        *(dry if gpu == "cpu" else []),
        f"Prediction: `{shown}` ({note}), made before any 2-GPU run from single-GPU phases. Error = (predicted − "
        "measured) / measured. Speedup = compiled single-GPU AR TPOT / SPD TPOT. TPOT and speedup are predicted "
        "at the nominal α (the realised α is beside it); the saturated cycle does not depend on α. The prediction "
        "priced 128 new tokens after ~128-token prompts; the runs decode the `max_new_tokens` of their "
        "config.json.",
        "",
    ]


def notes(out: Path, outcomes: list[dict], why: dict[str, str]) -> list[str]:
    """Held-out rule, lossless line, the variant the pair cannot run, and what shared the machine."""
    beside = any(o["step"] == "smol-head" and o["status"] == "done" for o in outcomes)
    return [
        "Held out: α = 0.95 and every qwen3-4b row; no calibration may use them (their config.json says "
        "`held_out: true`).",
        *(
            ["AR ran on GPU 0 while SmolLM2's head trained on GPU 1 (a separate process and GPU)."]
            if beside
            else []
        ),
        "",
        lossless_text(out, why),
        "",
        f"Not run: {own_gpu_drafter()}.",
        "",
    ]


def write_comparison(
    out: Path,
    outcomes: list[dict],
    models: tuple[str, ...],
    alphas: tuple[float, ...],
    given: Path | None = None,
) -> Path:
    """comparison.md and comparison.json in ``out``; ``outcomes``: the runner's step records."""
    why = {o["step"]: describe(o) for o in outcomes if o["status"] != "done"}
    gpu = run_gpu(out) or "unknown"
    path, note = pick_predictions(gpu, given)
    rows = compare(out, models, alphas, load_predictions(path) if path.is_file() else {}, why)
    lines = [*header(gpu, path, note), *table(rows), "", *notes(out, outcomes, why)]
    lines += [*bandwidth_lines(out, models), "", "## Steps", "", *[f"- {describe(o)}" for o in outcomes]]
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    cells = [
        {k: (v.__dict__ | {"error": v.error} if isinstance(v, Cell) else v) for k, v in r.items()}
        for r in rows
    ]
    data = {"gpu": gpu, "predictions": str(path), "rows": cells, "steps": outcomes}
    (out / "comparison.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    return out / "comparison.md"
