"""One-GPU fidelity: calibrate on AR + one chain run per model, validate every other run (held out).

    python studies/fidelity_1gpu/analyze.py [--results studies/fidelity_1gpu/results]

Reads the run directories and profile bundle that `measure.py` wrote per model; writes per model
``calibrated_profile.json``, and for all models ``validation.csv``, ``report.md`` and ``fidelity.png`` (TPOT
error per run, fitted and held-out apart).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from spdsim.calibration.fit import calibrate, write_profile  # noqa: E402
from spdsim.calibration.replay import validate  # noqa: E402
from spdsim.contract import ModelShape  # noqa: E402
from spdsim.errors import SpdsimError  # noqa: E402
from spdsim.scenario.memory import decode_step_weight_bytes, layer_weight_bytes  # noqa: E402

FIT_RUNS = ("ar", "eagle3_k3_a0.80")


def analyze_model(folder: Path) -> pd.DataFrame:
    runs = sorted(p for p in folder.iterdir() if (p / "summary.json").is_file())
    fit = [folder / name for name in FIT_RUNS if (folder / name).is_dir()]
    profile = calibrate([folder / "profile.json"], fit)
    profile_path = folder / "calibrated_profile.json"
    write_profile(profile, profile_path)
    rows = []
    comparisons = []
    for run in runs:  # one run at a time: a run the bundle cannot price is a row with its reason, not a crash
        try:
            comparisons += validate([run], profile_path, baseline=folder / "ar")
        except SpdsimError as exc:
            rows.append({"model": folder.name, "run": run.name, "role": "not priced", "warning": str(exc)})
    for comparison in comparisons:
        summary = json.loads((folder / comparison.run / "summary.json").read_text())
        rows.append(
            {
                "model": folder.name,
                **comparison.row(),
                "nominal_alpha": summary.get("nominal_alpha"),
                "realised_alpha": summary.get("realised_alpha"),
                "synthetic_reanchors": summary.get("synthetic_reanchors"),
                "warning": comparison.warning or "",
            }
        )
    return pd.DataFrame(rows)


def speed(folder: Path) -> dict:
    """Issue 11's speed figures from the same process's runs and bundle: the EAGLE-3 K = 3 iteration over the AR
    step, the chain speedup at nominal alpha 0.8, and the stage steps' fraction of the measured copy bandwidth."""
    out: dict = {"model": folder.name}
    ar = folder / "ar"
    chain = folder / "eagle3_k3_a0.80"
    if (ar / "summary.json").is_file() and (chain / "summary.json").is_file():
        ar_summary = json.loads((ar / "summary.json").read_text())
        chain_summary = json.loads((chain / "summary.json").read_text())
        ar_cycles = pd.read_csv(ar / "cycles.csv")
        chain_cycles = pd.read_csv(chain / "cycles.csv")
        phase_columns = [c for c in chain_cycles.columns if c.endswith("_us")]
        ar_step_us = float(ar_cycles["step_us"].median())
        iteration_us = float(chain_cycles[phase_columns].sum(axis=1).median())
        out.update(
            ar_tpot_ms=ar_summary["tpot_ms"],
            ar_step_us=ar_step_us,
            eagle3_k3_iteration_us=iteration_us,
            iteration_over_ar_step=iteration_us / ar_step_us,
            chain_tpot_ms=chain_summary["tpot_ms"],
            chain_speedup=ar_summary["tpot_ms"] / chain_summary["tpot_ms"],
            chain_realised_alpha=chain_summary.get("realised_alpha"),
            # the whole iteration on the host clock (phases + the one host sync + launches), mean over iterations
            eagle3_k3_iteration_wall_us=1e3 * chain_summary["tpot_ms"] * chain_summary["tokens_per_cycle"],
        )
        out["chain_k3_by_nominal_alpha"] = k3_runs = _k3_speedups(folder, ar_summary["tpot_ms"])
        nearest = min(k3_runs, key=lambda r: abs((r["realised_alpha"] or 0.0) - 0.8))
        out["chain_k3_nearest_realised_0_8"] = nearest
    bundle = json.loads((folder / "profile.json").read_text())
    shape, copy_gbps = ModelShape(**bundle["model"]), bundle["hardware"]["copy_bandwidth_gbps"]
    per_layer = layer_weight_bytes(shape, 1)
    one_token = [e for e in bundle["phases"]["layers"] if e["query_tokens"] == 1]
    kv_len = min(e["kv_len"] for e in one_token)  # the shortest window measured: the weights dominate
    fractions = {}
    for entry in one_token:
        if entry["kv_len"] == kv_len:
            gbps = entry["layers"] * per_layer / (entry["median_us"] * 1e-6) / 1e9
            fractions[str(entry["layers"])] = round(gbps / copy_gbps, 4)
    out.update(
        copy_bandwidth_gbps=copy_gbps, stage_step_kv_len=kv_len, stage_step_fraction_of_copy_bw_q1=fractions
    )
    # the graphed AR step (all layers + head) at the shortest window: weights only, like the stages
    ar_steps = bundle["phases"].get("ar_step", [])
    if ar_steps:
        step = min(ar_steps, key=lambda e: e["kv_len"])
        gbps = decode_step_weight_bytes(shape) / (step["median_us"] * 1e-6) / 1e9
        out.update(
            ar_step_bundle_us=step["median_us"],
            ar_step_bundle_kv_len=step["kv_len"],
            ar_step_fraction_of_copy_bw=round(gbps / copy_gbps, 4),
        )
    out.update(gpu=bundle["hardware"].get("gpu"), software=bundle.get("software"), date=bundle.get("date"))
    out["spd_one_gpu_overlap"] = [spd_overlap(run) for run in sorted(folder.glob("spd_n*"))]
    return out


def spd_overlap(run: Path) -> dict:
    """How far a single-process SPD run's phases overlapped on the one GPU (each stage has its own stream).

    The sum of a saturated cycle's phases (device events: each phase's own start to end) against the cycle's mean
    wall time; and the first stage alone (cycle 0: only the drafter runs beside it) against the same stage in
    saturated cycles, where every stage shares the GPU. A sum far above the wall, with stretched stages, means the
    stages ran concurrently: a model that lays them back to back (stage_placement "one-gpu") over-predicts."""
    summary = json.loads((run / "summary.json").read_text())
    cycles = pd.read_csv(run / "cycles.csv")
    phases = [c for c in cycles.columns if c.endswith("_us")]
    saturated = cycles[cycles.state == "saturated"]
    wall_us = 1e6 * summary["decode_seconds"] / len(cycles)
    phase_sum_us = float(saturated[phases].sum(axis=1).median())
    alone_us = float(cycles.loc[cycles.cycle == 0, "stage0_us"].median())
    shared_us = float(saturated["stage0_us"].median())
    return {
        "run": run.name,
        "cycle_wall_us_mean": wall_us,
        "saturated_phase_sum_us_median": phase_sum_us,
        "phase_sum_over_wall": phase_sum_us / wall_us,
        "stage0_alone_us": alone_us,
        "stage0_saturated_us": shared_us,
        "stage0_stretch": shared_us / alone_us,
    }


def _k3_speedups(folder: Path, ar_tpot_ms: float) -> list[dict]:
    """Every EAGLE-3 K = 3 run's realised alpha and speedup over AR: the goal is stated at *realised* 0.8, and
    on a GPU the realised alpha may fall below the nominal one (re-anchors)."""
    rows = []
    for run in sorted(folder.glob("eagle3_k3_a*")):
        summary = json.loads((run / "summary.json").read_text())
        rows.append(
            {
                "run": run.name,
                "nominal_alpha": summary.get("nominal_alpha"),
                "realised_alpha": summary.get("realised_alpha"),
                "speedup": ar_tpot_ms / summary["tpot_ms"],
            }
        )
    return rows


def speed_report(rows: list[dict]) -> str:
    lines = ["", "## Speed (issue 11), same process as the fidelity runs", ""]
    for row in rows:
        lines.append(
            f"- **{row['model']}** on {row.get('gpu')} (copy bandwidth {row['copy_bandwidth_gbps']:.0f} GB/s):"
        )
        if "chain_speedup" in row:
            lines.append(
                f"  AR step {row['ar_step_us']:.0f} us; EAGLE-3 K=3 iteration {row['eagle3_k3_iteration_us']:.0f} us "
                f"(median of its phases; {row['eagle3_k3_iteration_wall_us']:.0f} us on the host clock, mean) "
                f"= {row['iteration_over_ar_step']:.2f} x the AR step (goal <= 1.4); chain speedup at nominal 0.8 "
                f"(realised {row['chain_realised_alpha']:.3f}) {row['chain_speedup']:.2f}x (goal >= 1.8)"
            )
        if "chain_k3_nearest_realised_0_8" in row:
            near = row["chain_k3_nearest_realised_0_8"]
            lines.append(
                f"  K=3 run nearest realised 0.8: {near['run']} (realised {near['realised_alpha']:.3f}): "
                f"{near['speedup']:.2f}x over AR (goal >= 1.8 at realised 0.8)"
            )
        if "ar_step_fraction_of_copy_bw" in row:
            lines.append(
                f"  AR step in the bundle (graphed, kv={row['ar_step_bundle_kv_len']}) {row['ar_step_bundle_us']:.0f} us "
                f"= {row['ar_step_fraction_of_copy_bw']:.1%} of copy bandwidth (weights read per step; goal >= 80%)"
            )
        stages = ", ".join(
            f"{k} layers {v:.1%}"
            for k, v in sorted(row["stage_step_fraction_of_copy_bw_q1"].items(), key=lambda kv: -int(kv[0]))
        )
        lines.append(
            f"  stage step (q=1, kv={row['stage_step_kv_len']}) fraction of copy bandwidth: {stages}"
        )
        for spd in row.get("spd_one_gpu_overlap", []):
            lines.append(
                f"  {spd['run']} (one GPU, a stream per stage): saturated cycle's phases sum to "
                f"{spd['saturated_phase_sum_us_median']:.0f} us against a {spd['cycle_wall_us_mean']:.0f} us cycle "
                f"(x{spd['phase_sum_over_wall']:.2f}); stage 0 alone {spd['stage0_alone_us']:.0f} us, beside the "
                f"other stages {spd['stage0_saturated_us']:.0f} us (x{spd['stage0_stretch']:.2f}): the stages overlap"
            )
    return "\n".join(lines) + "\n"


def report(frame: pd.DataFrame) -> str:
    lines = [
        "# One-GPU fidelity (calibrated on AR + EAGLE-3 K=3 alpha 0.8; everything else held out)",
        "",
        "Signed errors (predicted - measured) / measured. Realised alpha beside the nominal one.",
        "",
        "| model | run | role | nominal a | realised a | re-anchors | TPOT meas. (ms) | TPOT err % | speedup meas. | speedup err % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in frame[frame.role != "not priced"].sort_values(["model", "role", "run"]).itertuples():

        def fmt(value, spec):
            return "" if value is None or pd.isna(value) else format(value, spec)

        lines.append(
            f"| {row.model} | {row.run} | {row.role} | {fmt(row.nominal_alpha, '.2f')} | "
            f"{fmt(row.realised_alpha, '.3f')} | {fmt(row.synthetic_reanchors, '.0f')} | "
            f"{fmt(row.measured_tpot_ms, '.3f')} | {fmt(row.error_pct_tpot_ms, '+.1f')} | "
            f"{fmt(row.measured_speedup, '.2f')} | {fmt(row.error_pct_speedup, '+.1f')} |"
        )
    for row in frame[frame.role == "not priced"].itertuples():
        lines.append(f"| {row.model} | {row.run} | not priced: {row.warning} |")
    lines.append("")
    for role in ("fitted", "held-out"):
        errors = frame.loc[frame.role == role, "error_pct_tpot_ms"].abs()
        if len(errors):
            lines.append(
                f"- {role}: {len(errors)} runs, |TPOT error| median {errors.median():.1f}%, max {errors.max():.1f}%, "
                f"{int((errors <= 5).sum())} within 5%"
            )
    return "\n".join(lines) + "\n"


def plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted(frame.model.unique())
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        part = frame[(frame.model == model) & (frame.role != "not priced")].sort_values("run")
        colors = ["tab:blue" if r == "fitted" else "tab:orange" for r in part.role]
        ax.barh(part.run, part.error_pct_tpot_ms, color=colors)
        ax.axvspan(-5, 5, color="0.9", zorder=0)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"{model}: TPOT error (blue fitted, orange held out)")
        ax.set_xlabel("predicted vs measured TPOT, %")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    results = Path(args.results).resolve()
    if results.is_relative_to(ROOT):  # the calibrated profiles record their inputs; no machine paths in them
        os.chdir(ROOT)
        results = results.relative_to(ROOT)
    folders = (
        sorted(p for p in results.iterdir() if (p / "profile.json").is_file()) if results.is_dir() else []
    )
    if not folders:
        print(f"error: no model folder with a profile.json in {results} (give --results <campaign folder>)")
        return 2
    try:
        frame = pd.concat([analyze_model(folder) for folder in folders], ignore_index=True)
    except SpdsimError as exc:  # e.g. a fitted run outside the bundle's KV range: one line, nothing written
        print(f"error: {exc}")
        return 2
    frame.to_csv(results / "validation.csv", index=False)
    speeds = [speed(folder) for folder in folders]
    (results / "speed.json").write_text(json.dumps(speeds, indent=1, default=str) + "\n")
    text = report(frame) + speed_report(speeds)
    (results / "report.md").write_text(text)
    plot(frame, results / "fidelity.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
