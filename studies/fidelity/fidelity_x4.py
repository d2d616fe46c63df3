"""Fidelity study, issue 6 (``studies/fidelity/run_fidelity_gpu_x4.sh``, one 4-GPU H200 call, unpacked into
``studies/fidelity/results/x4/``).

Per model (random:qwen3-8b, SmolLM2-135M with its trained heads) the single-GPU bundle plus the fitted 2-GPU runs
calibrate a profile: a model is calibrated only from its own bundle and its own runs. Costs fitted per stage count
are held at their n = 2 value for n = 3, 4 (``hold_stage_phases``); every ``dist4_*`` run (SPD n = 4 co-located,
n = 3 with a drafter GPU, TP-4, SmolLM2 n = 4) is held out. TP runs replay through the TP latency model where the
simulator supports it. Writes under ``fidelity_x4/``: ``validation.csv`` (with an offline lossless check against
the session's AR), ``fidelity.png``, ``profile_calibrated_<model>.json`` and the diagnoses behind the errors:

* ``one_time.csv`` — per SPD prompt, the iterations longer than 3x the run's p10 and how many of them are the
  first drafter call of a (query rows, head KV capacity) shape in the session (the controller sizes the head's
  cache per prompt: prompt + new tokens + n + 8 rows);
* ``prompts.csv`` — per prompt, measured against replayed TPOT and the median of every host and stream phase the
  controller times (a host-bound run is as fast as its host: SmolLM2's prompts differ where the model cannot);
* ``phases.csv`` — single-GPU phase prices against the same phases inside the runs.

Skipped while ``fidelity_x4/`` holds no measurements.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from fidelity_common import tpot_scatter, warm_metrics

from spdsim.calibration.fit import calibrate, one_time_limit_us, write_profile
from spdsim.calibration.measured_runs import MeasuredRun, load_run
from spdsim.calibration.replay import modelled_cycles_ns, validate
from spdsim.contract.profile_schema import load_profile
from spdsim.latency.profiled import MeasuredLatency
from spdsim.scenario.config import LatencySpec, ModelShape

DATA_X4 = Path(__file__).resolve().parent / "results" / "x4"
STAGE_PHASES = ("cycle_fixed", "verify_fixed", "colocated_contention")
TP_FILES = {"layers_tp": "{stem}_tp.json", "allreduce": "{stem}_allreduce2.json"}
PHASE_COLUMNS = ("control", "issue", "wait", "decide", "stage0", "stage1", "draft", "verify")
# Per model: (single-GPU bundle, fitted 1/2-GPU runs, {group: (AR baseline, runs)}); every dist4_* run is held out.
# Runs are listed in the order their session ran them (first-seen drafter shapes carry over within a session).
X4_MODELS = {
    "qwen3-8b": (
        "profile_h200_qwen3-8b.json",
        ("dist2_ar", "dist2_spd_n2_colo_a0.80"),
        {
            "2 GPUs: SPD n=2 co-located": (
                "dist2_ar",
                ("dist2_ar", "dist2_spd_n2_colo_a0.60", "dist2_spd_n2_colo_a0.80", "dist2_spd_n2_colo_a0.95"),
            ),
            "2 GPUs: TP-2 AR": ("dist2_ar", ("dist2_tp2_ar",)),
            "4 GPUs: SPD n=4 co-located": (
                "dist4_ar",
                ("dist4_ar", "dist4_spd_n4_colo_a0.70", "dist4_spd_n4_colo_a0.85"),
            ),
            "4 GPUs: SPD n=3 + drafter GPU": (
                "dist4_ar_ded",
                ("dist4_ar_ded", "dist4_spd_n3_ded_a0.70", "dist4_spd_n3_ded_a0.85"),
            ),
            "4 GPUs: TP-4 AR": ("dist4_ar", ("dist4_tp4_ar",)),
        },
    ),
    "smollm2-135m": (
        "profile_h200_smollm2-135m.json",
        ("dist2_smollm2_ar", "dist2_smollm2_spd_n2_colo"),
        {
            "2 GPUs: SmolLM2 SPD n=2 (trained head)": (
                "dist2_smollm2_ar",
                ("dist2_smollm2_ar", "dist2_smollm2_spd_n2_colo"),
            ),
            "4 GPUs: SmolLM2 SPD n=4 8,8,7,7 (trained head)": (
                "dist4_smollm2_ar",
                ("dist4_smollm2_ar", "dist4_smollm2_spd_n4_colo"),
            ),
        },
    ),
}


def hold_stage_phases(profile: dict, stage_counts: tuple[int, ...]) -> dict:
    """Costs fitted per stage count (from n <= 2 runs) held at their largest fitted n for the held-out n: the
    grid tables do not extrapolate, and no 3- or 4-GPU measurement may enter the calibration."""
    for phase in STAGE_PHASES:
        entries = profile["phases"].get(phase)
        if entries:
            last = max(entries, key=lambda e: e["num_stages"])
            entries += [{**last, "num_stages": n} for n in stage_counts if n > last["num_stages"]]
    return profile


def with_tp_phases(bundle_path: Path) -> Path:
    """The bundle plus the TP microbenchmarks (one GPU's shard layers, the 2-rank all-reduce) for the phases the
    profile schema knows; the bundle itself when it knows neither or they were not measured."""
    from spdsim.contract.profile_schema import PHASE_COORDINATES, STAT_FIELDS

    bundle = json.loads(bundle_path.read_text())
    added = []
    for phase, pattern in TP_FILES.items():
        path = bundle_path.with_name(pattern.format(stem=bundle_path.stem))
        if phase not in PHASE_COORDINATES or phase in bundle["phases"] or not path.is_file():
            continue
        keys = PHASE_COORDINATES[phase] + STAT_FIELDS
        entries = [e for e in json.loads(path.read_text())["phases"][phase] if all(k in e for k in keys)]
        if entries:
            bundle["phases"][phase] = [{k: e[k] for k in keys} for e in entries]
            added.append(phase)
    if not added:
        return bundle_path
    merged = bundle_path.with_name(f"{bundle_path.stem}_with_tp.json")
    merged.write_text(json.dumps(bundle, indent=1) + "\n")
    return merged


def same_tokens(data: Path, name: str, baseline: str) -> str:
    """Offline lossless check: prompts whose decoded tokens equal the AR baseline's, as 'k/N'."""
    ours, theirs = (pd.read_csv(data / n / "tokens.csv") for n in (name, baseline))
    prompts = list(theirs.prompt_id.unique())
    same = sum(
        list(ours[ours.prompt_id == p].sort_values("index").token)
        == list(theirs[theirs.prompt_id == p].sort_values("index").token)
        for p in prompts
    )
    return f"{same}/{len(prompts)}"


def validate_x4_run(data: Path, name: str, baseline: str, profile_path: Path) -> dict:
    """One run's strict replay; a TP run only where the simulator reads its degree (else an error row)."""
    from spdsim.calibration.replay import method_spec
    from spdsim.errors import SpdsimError

    run = load_run(data / name)
    row: dict = {"run": name, "method": run.method, "lossless_vs_ar": same_tokens(data, name, baseline)}
    row["role"] = "held-out, 4 GPUs" if name.startswith("dist4") else "held-out"
    try:
        degree = int(run.config.get("tp_degree") or 1)
        if method_spec(run).tensor_parallel != degree:
            raise SpdsimError(
                f"TODO: spdsim.calibration.replay replays this TP-{degree} run as single-GPU AR"
            )
        comparison = validate([data / name], profile_path, data / baseline)[0]
        row.update(comparison.row())
        row["role"] = "held-out, 4 GPUs" if name.startswith("dist4") else comparison.role
        row.update(warm_metrics(name, data))
        base = warm_metrics(baseline, data)
        row["warm_speedup"] = row["warm_tokens_per_s"] / base["warm_tokens_per_s"]
        for metric in ("tpot_ms", "speedup"):
            row[f"warm_error_pct_{metric}"] = (
                100 * (row[f"predicted_{metric}"] - row[f"warm_{metric}"]) / row[f"warm_{metric}"]
            )
    except SpdsimError as exc:
        row["problem"] = str(exc)
    return row


# --- diagnoses ---------------------------------------------------------------------------------------------------
def drafter_rows(run: MeasuredRun) -> dict[str, list[int]]:
    """Query rows of every drafter call per prompt, following the controller's schedule
    (``executor/distributed/controller.py``): the in-flight tokens plus the pending token after a verification."""
    rows: dict[str, list[int]] = {}
    for prompt in run.prompts:
        mine, pipeline, pending, verify = [], 1, False, 0
        for _ in prompt.cycle_us:
            mine.append(pipeline + int(pending))
            if pipeline < run.num_stages:
                pipeline, pending = pipeline + 1, False
                continue
            accepted = prompt.outcomes[verify] if verify < len(prompt.outcomes) else 1
            verify, pending = verify + 1, True
            pipeline = run.num_stages if accepted else 1
        rows[prompt.prompt_id] = mine
    return rows


def head_capacity(run: MeasuredRun, prompt_tokens: int) -> int:
    """Rows of the drafter's KV cache for one prompt, as the controller allocates it."""
    return prompt_tokens + int(run.config["max_new_tokens"]) + run.num_stages + 8


def one_time_rows(data: Path, session: tuple[str, ...]) -> list[dict]:
    """Per SPD prompt of one session (runs in the order they ran): one-time iterations (> 3x the run's p10),
    how many of them are first-seen (rows, capacity) drafter shapes, and their excess over the median of the other
    iterations of their state, as a share of the run's decode time."""
    seen: set[tuple[int, int]] = set()
    out = []
    for name in session:
        if not (data / name).is_dir():
            continue
        run = load_run(data / name)
        limit_us = one_time_limit_us(run)
        cycles = pd.read_csv(data / name / "cycles.csv")
        states = cycles.state.replace("fill", "refill")  # both run stage 0 + the drafter only
        typical = cycles.cycle_us[cycles.cycle_us <= limit_us].groupby(states).median()
        rows = drafter_rows(run)
        for prompt in run.prompts:
            capacity = head_capacity(run, prompt.prompt_tokens)
            slow, first_seen, first_and_slow, excess_us = 0, 0, 0, 0.0
            for count, state, wall_us in zip(
                rows[prompt.prompt_id], prompt.cycle_states, prompt.cycle_us, strict=True
            ):
                new = (count, capacity) not in seen
                seen.add((count, capacity))
                first_seen += new
                if wall_us > limit_us:
                    slow += 1
                    first_and_slow += new
                    excess_us += wall_us - float(typical["refill" if state == "fill" else state])
            mine = cycles[cycles.prompt_id == prompt.prompt_id].sort_values("cycle")
            draft_us = pd.to_numeric(mine.draft_us, errors="coerce")
            out.append(
                {
                    "run": name,
                    "prompt_id": prompt.prompt_id,
                    "prompt_tokens": prompt.prompt_tokens,
                    "head_capacity": capacity,
                    "cycles": len(prompt.cycle_us),
                    "first_seen_shapes": first_seen,
                    "one_time_cycles": slow,
                    "one_time_and_first_seen": first_and_slow,
                    "one_time_ms": excess_us / 1e3,
                    "max_draft_ms": float(draft_us.max()) / 1e3,
                    "share_of_run_decode_pct": 100 * excess_us / run.decode_us,
                }
            )
    return out


def prompt_rows(data: Path, name: str, profile: dict) -> list[dict]:
    """Per prompt: measured and replayed TPOT (the simulator's iteration costs along the measured trace) and the
    median of every phase the executor timed."""
    run = load_run(data / name)
    cycles = pd.read_csv(data / name / "cycles.csv")
    out = []
    for prompt in run.prompts:
        predicted_us = float(np.sum(modelled_cycles_ns(run, prompt, profile))) / 1e3
        row = {
            "run": name,
            "prompt_id": prompt.prompt_id,
            "measured_tpot_ms": prompt.decode_us / 1e3 / prompt.decode_tokens,
            "predicted_tpot_ms": predicted_us / 1e3 / prompt.decode_tokens,
        }
        row["error_pct_tpot_ms"] = 100 * (row["predicted_tpot_ms"] / row["measured_tpot_ms"] - 1)
        mine = cycles[cycles.prompt_id == prompt.prompt_id]
        for phase in ("cycle", "step", *PHASE_COLUMNS):
            if f"{phase}_us" in mine:
                row[f"{phase}_median_us"] = float(
                    pd.to_numeric(mine[f"{phase}_us"], errors="coerce").median()
                )
        out.append(row)
    return out


def phase_rows(data: Path, spd_name: str, ar_name: str, profile: dict) -> list[dict]:
    """The single-GPU phase prices (n = 2, even split, drafter priced with n + 1 rows as the simulator does)
    against the same phases timed inside the runs, and the calibrated term that absorbs the difference."""
    shape = ModelShape(**profile["model"])
    latency = MeasuredLatency(shape, None, LatencySpec(kind="measured"), profile)
    run = load_run(data / spd_name)
    layers = int(run.config["stage_layers"][0])
    kv = int(np.median([p.prompt_tokens for p in run.prompts])) + 32
    cycles = pd.read_csv(data / spd_name / "cycles.csv")
    saturated = cycles[cycles.state == "saturated"]
    checks = [
        (
            f"stage0 forward ({layers} layers + embed), drafter's stream beside it",
            cycles.stage0_us,
            (latency.layers_ns(layers, 1, kv) + latency.embed_ns(1)) / 1e3,
            "colocated_contention",
        ),
        (
            f"stage1 forward ({layers} layers, own GPU)",
            saturated.stage1_us,
            latency.layers_ns(layers, 1, kv) / 1e3,
            "none",
        ),
        (
            "drafter (eager: aggr + 1 layer + lm_head)",
            cycles.draft_us,
            latency.pdm_ns(1, run.num_stages + 1, kv) / 1e3,
            "colocated_contention",
        ),
        (
            "verify (norm + lm_head + argmax, host sync)",
            saturated.verify_us,
            latency.head_ns(1) / 1e3,
            "verify_fixed",
        ),
        ("control broadcast (host)", cycles.control_us, 0.0, "cycle_fixed"),
        (
            "issue - draft (host launches + draft sampling)",
            cycles.issue_us - cycles.draft_us,
            0.0,
            "cycle_fixed",
        ),
        ("decide, refill (host)", cycles[cycles.state == "refill"].decide_us, 0.0, "cycle_fixed"),
        ("decide, saturated (host, includes verify)", saturated.decide_us, 0.0, "cycle_fixed + verify_fixed"),
    ]
    ar_steps = pd.read_csv(data / ar_name / "cycles.csv").step_us
    checks.append(
        ("AR step (graph replay + argmax)", ar_steps, latency.target_ns(1, kv) / 1e3, "cycle_fixed(1)")
    )
    out = []
    for phase, measured, price, absorbed_by in checks:
        values = pd.to_numeric(measured, errors="coerce").dropna()
        out.append(
            {
                "run": spd_name,
                "phase": phase,
                "measured_median_us": float(values.median()),
                "profile_us": float(price),
                "absorbed_by": absorbed_by,
                "samples": int(values.size),
            }
        )
    return out


def validate_x4(data: Path = DATA_X4) -> pd.DataFrame | None:
    """Calibrate per model on the single-GPU bundle + the fitted 2-GPU runs, replay every run of the 4-GPU call;
    writes ``validation.csv``, ``profile_calibrated_<model>.json``, ``fidelity.png`` and the diagnoses."""
    rows, one_time, prompts, phases = [], [], [], []
    for model, (bundle_name, fitted, groups) in X4_MODELS.items():
        missing = [n for n in (bundle_name, *fitted) if not (data / n).exists()]
        if missing:
            print(f"fidelity_x4 {model}: not measured yet (missing {', '.join(missing)})")
            continue
        bundle = with_tp_phases(data / bundle_name)
        profile = hold_stage_phases(calibrate([bundle], [data / n for n in fitted]), (3, 4))
        profile_path = write_profile(profile, data / f"profile_calibrated_{model}.json")
        profile = load_profile(profile_path)
        for group, (baseline, names) in groups.items():
            present = [n for n in names if (data / n).is_dir() and (data / baseline).is_dir()]
            for name in present:
                rows.append(
                    {"model": model, "group": group, **validate_x4_run(data, name, baseline, profile_path)}
                )
                if name.startswith("dist2"):
                    prompts += prompt_rows(data, name, profile)
            spd = [n for n in present if "_spd_" in n and n.startswith("dist2")]
            one_time += one_time_rows(data, tuple(spd))
            if spd:
                phases += [{"model": model, **r} for r in phase_rows(data, spd[0], baseline, profile)]
    if not rows:
        return None
    validation = pd.DataFrame(rows)
    validation.to_csv(data / "validation.csv", index=False)
    for frame, name in ((one_time, "one_time.csv"), (prompts, "prompts.csv"), (phases, "phases.csv")):
        pd.DataFrame(frame).to_csv(data / name, index=False)
    plot_x4(
        validation[validation.get("predicted_tpot_ms", pd.Series(dtype=float)).notna()], data / "fidelity.png"
    )
    return validation


def plot_x4(validation: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if validation.empty:
        return
    fig, ax = plt.subplots(figsize=(7, 5.5))
    roles = (("fitted", "o"), ("held-out", "s"), ("held-out, 4 GPUs", "D"))
    tpot_scatter(ax, validation, roles, "4-GPU call: calibrated on 1/2-GPU data, 4-GPU runs held out")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def print_x4(validation: pd.DataFrame | None, data: Path = DATA_X4) -> None:
    if validation is None:
        return
    columns = [
        c
        for c in (
            "group",
            "run",
            "role",
            "lossless_vs_ar",
            "measured_tpot_ms",
            "predicted_tpot_ms",
            "error_pct_tpot_ms",
            "error_pct_speedup",
            "warm_error_pct_tpot_ms",
            "warm_error_pct_speedup",
            "problem",
        )
        if c in validation.columns
    ]
    print(validation[columns].round(2).to_string(index=False))
    for name in ("one_time.csv", "prompts.csv", "phases.csv"):
        print(pd.read_csv(data / name).round(1).to_string(index=False))


if __name__ == "__main__":
    print_x4(validate_x4())
