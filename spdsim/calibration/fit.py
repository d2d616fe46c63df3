"""Executor measurements -> a calibrated profile (docs/design.md §2, docs/metrics.md §2).

1. Profile bundles (``executor profile``) are merged into one interpolated table per phase; where bundles measure
   the same point the median of their medians is kept.
2. Measured run directories add what single-phase microbenchmarks cannot see:
   * ``colocated_contention`` (SPD with the drafter on stage 0's GPU): c such that stage 0 and the drafter,
     issued on two streams, keep the GPU busy max(a, b) + c·min(a, b). a is stage 0's forward as it runs alone
     inside the run (the profile's price scaled by the in-run/profile ratio of the other stages' forwards, which
     share no GPU), b the profile's PDM; the busy time is the later end of the two streams' timed spans per
     cycle (``stage0_us``, ``draft_us``); c = median over cycles, clipped to [0, 1];
   * ``cycle_fixed``: the serial per-iteration cost outside the timed phases (control words, host launches,
     sampling, synchronisation) = the median, over the run's iterations, of measured wall time minus the
     simulator's own cost of that iteration without it (AR: ``num_stages`` = 1; SPD: its n, over the fill and
     refill cycles, which verify nothing);
   * ``verify_fixed`` (SPD): what a verification cycle costs beyond that and the ``head`` phase (the receive
     of the last stage's output, the host's decision) = median residual of verification cycles − cycle_fixed;
   * ``chain_draft``: a chain drafter pass (median of the run's per-pass times), when the bundles lack it;
   * ``chain_fixed`` (chain runs): what an iteration costs beyond its K drafter passes and its verify (the host
     sync, the first pass's extra rows, the on-device acceptance) = the median residual of its iterations, per K.
3. Optionally (``fit=True``) a few-coefficient least-squares fit per phase is stored under ``"fit"``; latency kind
   ``fitted`` reads it and, unlike the table, extrapolates.

Medians leave out one-time iterations (longer than ``ONE_TIME_FACTOR`` × the run's 10th percentile: a CUDA-graph
capture, a first-seen attention shape): they are no per-cycle cost, and in a short run they are numerous enough
to bias a median. The runs used are listed under ``"calibration"`` so that ``spdsim validate`` can report fitted and held-out
configurations apart.
"""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spdsim.calibration.measured_runs import MeasuredRun, load_run
from spdsim.contract.profile_schema import PHASE_COORDINATES, STAT_FIELDS, load_profile, validate_profile
from spdsim.contract.vocabulary import DRAFTER_FROM_EXECUTOR
from spdsim.errors import SpdsimError
from spdsim.latency.profiled import DERIVED_TERMS, FIT_TERMS, fit_phase

CHAIN_FIXED_METHODS = ("eagle3", "draft-model")  # chain runs that `spdsim validate` replays
ONE_TIME_FACTOR = 3.0  # an iteration longer than this × the run's 10th percentile is a one-time cost
MODEL_KEYS = (
    "num_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_kv_heads",
    "vocab_size",
)


def merge_bundles(bundles: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """One profile from several bundles of the same model, dtype and hardware."""
    if not bundles:
        raise SpdsimError("calibrate: give at least one profile bundle")
    first = bundles[0]
    for bundle, name in zip(bundles[1:], names[1:], strict=True):
        for key in MODEL_KEYS:
            if bundle["model"].get(key) != first["model"].get(key):
                raise SpdsimError(
                    f"calibrate: bundle '{name}' is for model.{key}={bundle['model'].get(key)}, "
                    f"'{names[0]}' for {first['model'].get(key)} (one model per profile)"
                )
        for key in ("dtype",):
            if bundle[key] != first[key]:
                raise SpdsimError(
                    f"calibrate: bundle '{name}' has {key} {bundle[key]}, '{names[0]}' {first[key]}"
                )
        if bundle["hardware"].get("name") != first["hardware"].get("name"):
            raise SpdsimError(
                f"calibrate: bundle '{name}' was measured on {bundle['hardware'].get('name')}, "
                f"'{names[0]}' on {first['hardware'].get('name')}"
            )
    merged = copy.deepcopy(first)
    phases: dict[str, dict[tuple, list[dict]]] = {}
    for bundle in bundles:
        for phase, entries in bundle["phases"].items():
            for entry in entries:
                point = tuple(float(entry[c]) for c in PHASE_COORDINATES[phase])
                phases.setdefault(phase, {}).setdefault(point, []).append(entry)
    merged["phases"] = {
        phase: [_combine(phase, group) for _, group in sorted(points.items())]
        for phase, points in phases.items()
    }
    merged["source"] = "spdsim calibrate: " + ", ".join(names)
    return merged


def _model_key(name: Any) -> str:
    """A model name as bundles and runs spell it: ``random:qwen3-8b`` and ``qwen3-8b`` are one shape; a local
    directory or file is named by its last part."""
    text = str(name or "").strip().rstrip("/").lower()
    text = text.removeprefix("random:")
    return Path(text).name if "/" in text else text


def check_run_matches(run: MeasuredRun, bundle: dict[str, Any], bundle_name: str) -> None:
    """A measured run calibrates a profile only if it ran the bundle's model, dtype and hardware: otherwise the
    residuals it leaves (e.g. a bigger model's time) would be absorbed silently into the fixed costs."""
    config = run.config
    run_model, bundle_model = config.get("model"), bundle["model"].get("name")
    if run_model and bundle_model and _model_key(run_model) != _model_key(bundle_model):
        raise SpdsimError(
            f"calibrate: run '{run.path}' measured model {run_model}, bundle '{bundle_name}' model {bundle_model}"
            " (one model per profile)"
        )
    if config.get("dtype") and config["dtype"] != bundle.get("dtype"):
        raise SpdsimError(
            f"calibrate: run '{run.path}' ran in {config['dtype']}, bundle '{bundle_name}' in {bundle.get('dtype')}"
        )
    hardware = bundle.get("hardware", {})
    run_gpu = config.get("gpu")
    device = str(config.get("device") or "")
    if run_gpu and hardware.get("gpu") and hardware.get("name") != "cpu" and run_gpu != hardware["gpu"]:
        raise SpdsimError(
            f"calibrate: run '{run.path}' ran on {run_gpu}, bundle '{bundle_name}' on {hardware['gpu']}"
        )
    on_cpu = device.startswith("cpu")
    if device and (on_cpu != (hardware.get("name") == "cpu")):
        raise SpdsimError(
            f"calibrate: run '{run.path}' ran on {device}, bundle '{bundle_name}' on {hardware.get('name')}"
        )


def _combine(phase: str, entries: list[dict]) -> dict:
    out = {c: entries[0][c] for c in PHASE_COORDINATES[phase]}
    out["median_us"] = float(np.median([e["median_us"] for e in entries]))
    out["p10_us"] = float(min(e["p10_us"] for e in entries))
    out["p90_us"] = float(max(e["p90_us"] for e in entries))
    out["samples"] = int(sum(e["samples"] for e in entries))
    return out


def _stats(values: np.ndarray, coords: dict) -> dict:
    return {
        **coords,
        "median_us": float(np.median(values)),
        "p10_us": float(np.percentile(values, 10)),
        "p90_us": float(np.percentile(values, 90)),
        "samples": int(values.size),
    }


def chain_draft_entries(run: MeasuredRun) -> list[dict]:
    """Median chain drafter pass of a chain run, flat over the run's KV range (draft_layers from its config)."""
    import pandas as pd

    cycles = pd.read_csv(run.path / "cycles.csv")
    columns = [c for c in cycles.columns if c.startswith("draft") and c.endswith("_us")]
    values = cycles[columns].to_numpy(dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise SpdsimError(f"calibrate: run '{run.path}' has no draft phase times in cycles.csv")
    kv = [p.prompt_tokens for p in run.prompts] + [p.prompt_tokens + p.decode_tokens + 8 for p in run.prompts]
    layers = int(run.config.get("draft_layers") or 1)
    return [_stats(values, {"draft_layers": layers, "kv_len": k}) for k in (min(kv), max(kv))]


def one_time_limit_us(run: MeasuredRun) -> float:
    """Iterations longer than this are one-time costs (module docstring)."""
    return ONE_TIME_FACTOR * float(np.percentile(run.cycle_us, 10))


def _nonnegative(entry: dict) -> dict:
    entry["median_us"] = max(entry["median_us"], 0.0)
    entry["p10_us"] = min(max(entry["p10_us"], 0.0), entry["median_us"])
    entry["p90_us"] = max(entry["p90_us"], entry["median_us"])
    return entry


def fixed_cost_entries(run: MeasuredRun, profile: dict[str, Any]) -> tuple[dict, dict | None]:
    """Serial costs the phase tables miss, from measured minus modelled iteration times: ``cycle_fixed`` (over
    the iterations that verify nothing, where a pipeline run has them) and, for a pipeline, ``verify_fixed``."""
    from spdsim.calibration.replay import modelled_cycles_ns
    from spdsim.methods.pipeline import cycle_plan

    if run.pipeline and any(p.walls_per_commit for p in run.prompts):
        raise SpdsimError(
            f"calibrate: run '{run.path}' has commit gaps, not per-cycle wall times (cycles.csv has no cycle_us), "
            "so its serial per-cycle costs cannot be fitted; give it to validate instead"
        )
    limit_us = one_time_limit_us(run)
    residuals, verifies = [], []
    for prompt in run.prompts:
        modelled_ns = modelled_cycles_ns(run, prompt, profile, without_fixed=True)
        measured = np.asarray(prompt.cycle_us, dtype=np.float64)
        count = min(len(modelled_ns), measured.size)
        keep = measured[:count] <= limit_us
        residual = measured[:count] - np.asarray(modelled_ns[:count], dtype=np.float64) / 1e3
        residuals.append(residual[keep])
        if run.pipeline:
            plan = cycle_plan(prompt.outcomes, run.num_stages, prompt.decode_tokens)
            verify = np.array([active == run.num_stages for active, _ in plan[:count]], dtype=bool)
        else:
            verify = np.ones(count, dtype=bool)
        verifies.append(verify[keep])
    values, verify = np.concatenate(residuals), np.concatenate(verifies)
    if run.method != "ar" and not run.pipeline:
        return _nonnegative(_stats(values, {"draft_tokens": int(run.config.get("k") or 3)})), None
    stages = run.num_stages if run.pipeline else 1
    if not run.pipeline or verify.all() or not verify.any():
        return _nonnegative(_stats(values, {"num_stages": stages})), None
    fixed = _nonnegative(_stats(values[~verify], {"num_stages": stages}))
    extra = _nonnegative(_stats(values[verify] - fixed["median_us"], {"num_stages": stages}))
    return fixed, extra


def colocated_contention_entry(run: MeasuredRun, profile: dict[str, Any]) -> dict | None:
    """Contention of a co-located SPD run's drafter and stage 0 (module docstring); None where the run is not
    co-located or lacks the per-stream phase times. Stats in µs per ms of the shorter member (1000·c)."""
    import pandas as pd

    from spdsim.calibration.replay import replay_latency, replay_scenario
    from spdsim.methods.pipeline import cycle_plan, pipeline_costs

    if not run.pipeline or DRAFTER_FROM_EXECUTOR.get(run.config.get("drafter", "")) != "stage0":
        return None
    cycles = pd.read_csv(run.path / "cycles.csv")
    if not {"stage0_us", "draft_us"} <= set(cycles.columns):
        return None
    timed = [c for c in cycles.columns if c.startswith(("stage", "draft")) and c.endswith("_us")]
    cycles[timed] = cycles[timed].apply(pd.to_numeric, errors="coerce")  # unreadable values: NaN, skipped
    serial = copy.deepcopy(profile)
    serial["phases"].pop("colocated_contention", None)
    stages = run.num_stages
    limit_us = one_time_limit_us(run)
    busy, alone, drafter, in_run, priced = [], [], [], [], []
    for prompt in run.prompts:
        scenario = replay_scenario(run, prompt, serial)
        costs = pipeline_costs(scenario, replay_latency(scenario, serial))
        plan = cycle_plan(prompt.outcomes, stages, prompt.decode_tokens)
        mine = cycles[cycles["prompt_id"].astype(str) == prompt.prompt_id].sort_values("cycle")
        for (active, committed), (_, row), wall_us in zip(
            plan, mine.iterrows(), prompt.cycle_us, strict=False
        ):
            if wall_us > limit_us:
                continue
            busy.append(np.maximum(row["stage0_us"], row["draft_us"]))  # NaN if either is missing
            alone.append(costs.forward_ns[0][committed] / 1e3)
            drafter.append(costs.stage0_draft_ns[committed] / 1e3)  # serial profile: the whole PDM
            for s in range(1, active):
                value = row.get(f"stage{s}_us")
                if value is not None and np.isfinite(value):
                    in_run.append(value)
                    priced.append(costs.forward_ns[s][committed] / 1e3)
    busy_us, alone_us, drafter_us = (np.asarray(v, dtype=np.float64) for v in (busy, alone, drafter))
    ok = np.isfinite(busy_us)
    in_run_ratio = float(np.median(np.asarray(in_run) / np.asarray(priced))) if in_run else 1.0
    alone_us = alone_us * in_run_ratio
    shorter = np.minimum(alone_us, drafter_us)
    with np.errstate(divide="ignore", invalid="ignore"):
        factors = (busy_us - np.maximum(alone_us, drafter_us)) / shorter
    ok &= np.isfinite(factors)
    if not ok.any():
        return None
    entry = _stats(1000.0 * factors[ok], {"num_stages": stages})
    entry["median_us"] = min(max(entry["median_us"], 0.0), 1000.0)
    entry["p10_us"] = min(max(entry["p10_us"], 0.0), entry["median_us"])
    entry["p90_us"] = min(max(entry["p90_us"], entry["median_us"]), 1000.0)
    return entry


def _shown(path: str | Path) -> str:
    """A bundle as the calibrated profile records it: relative to the working directory when inside it, so a
    committed profile names no machine's paths."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(Path.cwd())) if resolved.is_relative_to(Path.cwd()) else str(path)


def calibrate(
    bundle_paths: list[str | Path], run_paths: Sequence[str | Path] = (), fit: bool = False
) -> dict[str, Any]:
    """The calibrated profile (schema v1, plus ``"calibration"`` provenance and, with ``fit``, ``"fit"``)."""
    names = [_shown(p) for p in bundle_paths]
    profile = merge_bundles([load_profile(p) for p in bundle_paths], names)
    runs = [load_run(p) for p in run_paths]
    for run in runs:
        check_run_matches(run, profile, names[0])
    chain_runs = [r for r in runs if not r.pipeline and r.method != "ar"]
    if chain_runs and "chain_draft" not in profile["phases"]:
        profile["phases"]["chain_draft"] = chain_draft_entries(chain_runs[0])
    contention: dict[int, list[dict]] = {}
    for run in runs:
        entry = colocated_contention_entry(run, profile)
        if entry is not None:
            contention.setdefault(entry["num_stages"], []).append(entry)
    _set_phase(profile, "colocated_contention", contention)
    fixed: dict[int, list[dict]] = {}
    verify: dict[int, list[dict]] = {}
    chain: dict[int, list[dict]] = {}
    for run in runs:  # AR and pipelines first: a chain residual is taken after their fixed costs
        if run.method == "ar" or run.pipeline:
            entry, extra = fixed_cost_entries(run, profile)
            fixed.setdefault(entry["num_stages"], []).append(entry)
            if extra is not None:
                verify.setdefault(extra["num_stages"], []).append(extra)
    _set_phase(profile, "cycle_fixed", fixed)
    _set_phase(profile, "verify_fixed", verify)
    for run in chain_runs:
        if run.method in CHAIN_FIXED_METHODS:
            entry, _ = fixed_cost_entries(run, profile)
            chain.setdefault(entry["draft_tokens"], []).append(entry)
    _set_phase(profile, "chain_fixed", chain)
    if "allreduce" in profile["phases"]:
        profile["allreduce_fit"] = fit_allreduce_ring(profile["phases"]["allreduce"])
    profile["calibration"] = {
        "bundles": names,
        "runs": [run.name for run in runs],
        "date": datetime.date.today().isoformat(),
        "rule": (
            "colocated_contention = median over cycles of (stream busy - max(a, b)) / min(a, b), a = stage 0 "
            "alone in the run, b = PDM; cycle_fixed = median(measured iteration wall - modelled iteration "
            "without fixed costs) over iterations without verification (all for AR); verify_fixed = "
            "median over verification cycles of the same residual - cycle_fixed; chain_fixed = median over a "
            "chain run's iterations of the same residual, per K"
        ),
    }
    if fit:
        profile["fit"] = {
            phase: fit_phase(phase, entries)
            for phase, entries in profile["phases"].items()
            if phase in FIT_TERMS and len(entries) >= len(FIT_TERMS[phase])
        }
    return validate_profile(profile)


RING_RULE = (
    "t_us = ring_steps*(d-1) + ring_bytes*2(d-1)/d*bytes, least squares on relative error over the measured "
    "allreduce entries with d >= 2, coefficients >= 0; used only for degrees the allreduce table lacks"
)


def fit_allreduce_ring(entries: list[dict]) -> dict[str, Any]:
    """Alpha-beta ring model of the all-reduce, fitted on the measured degrees (e.g. 2 GPUs) so that the
    simulator can price a degree nobody measured (4 or 8 GPUs). Relative error: decode messages are small, so the
    latency-bound points must weigh as much as the bandwidth-bound ones."""
    points = [e for e in entries if e["tp_degree"] >= 2]  # d = 1 carries no information (both terms vanish)
    if len({(e["tp_degree"], e["bytes"]) for e in points}) < 2:
        raise SpdsimError(
            "calibrate: the allreduce ring fit needs >= 2 distinct (tp_degree, bytes) points with tp_degree >= 2"
        )
    terms = FIT_TERMS["allreduce"]
    design = np.array([[float(DERIVED_TERMS[t](e)) for t in terms] for e in points], dtype=np.float64)
    target = np.array([e["median_us"] for e in points], dtype=np.float64)
    weights = 1.0 / np.maximum(target, 1e-9)
    design, target = design * weights[:, None], target * weights
    candidates = [np.linalg.lstsq(design, target, rcond=None)[0]]
    for keep in range(len(terms)):  # one coefficient alone: the non-negative optimum if the joint one is not
        alone = np.zeros(len(terms))
        alone[keep] = max(
            float(design[:, keep] @ target / max(design[:, keep] @ design[:, keep], 1e-30)),  # type: ignore[operator]
            0.0,
        )
        candidates.append(alone)
    feasible = [c for c in candidates if (c >= 0).all()]
    best = min(feasible, key=lambda c: float(np.sum((design @ c - target) ** 2)))
    return {
        "coefficients": {t: float(v) for t, v in zip(terms, best, strict=True)},
        "degrees": sorted({int(e["tp_degree"]) for e in points}),
        "rule": RING_RULE,
    }


def _set_phase(profile: dict[str, Any], phase: str, groups: dict[int, list[dict]]) -> None:
    if groups:
        profile["phases"][phase] = [_combine(phase, group) for _, group in sorted(groups.items())]


def write_profile(profile: dict[str, Any], out: str | Path) -> Path:
    """Write atomically (``spdsim.contract.files``): nothing half-written on failure."""
    from spdsim.contract.files import write_text_file

    return write_text_file(out, json.dumps(profile, indent=1, sort_keys=True) + "\n")


__all__ = ["STAT_FIELDS", "calibrate", "merge_bundles", "write_profile"]
