"""Executor measurements -> a calibrated profile (DESIGN.md §2, simulators.md A.12).

1. Profile bundles (``executor profile``) are merged into one interpolated table per phase; where bundles measure
   the same point the median of their medians is kept.
2. Measured run directories add what single-phase microbenchmarks cannot see:
   * ``cycle_fixed``: the serial per-iteration cost outside the timed phases (control words, host launches,
     sampling, synchronisation) = the median, over the run's iterations, of measured wall time minus the
     simulator's own cost of that iteration without it (AR: ``num_stages`` = 1; SPD: its n);
   * ``chain_draft``: a chain drafter pass (median of the run's per-pass times), when the bundles lack it.
3. Optionally (``fit=True``) a few-coefficient least-squares fit per phase is stored under ``"fit"``; latency kind
   ``fitted`` reads it and, unlike the table, extrapolates.

The runs used are listed under ``"calibration"`` so that ``spdsim validate`` can report fitted and held-out
configurations apart.
"""

from __future__ import annotations

import copy
import datetime
import json
from pathlib import Path
from typing import Any

import numpy as np

from spdsim.errors import SpdsimError
from spdsim.latency import FIT_TERMS, fit_phase
from spdsim.measured import MeasuredRun, load_run
from spdsim.profile_schema import PHASE_COORDINATES, STAT_FIELDS, load_profile, validate_profile

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
                key = tuple(float(entry[c]) for c in PHASE_COORDINATES[phase])
                phases.setdefault(phase, {}).setdefault(key, []).append(entry)
    merged["phases"] = {
        phase: [_combine(phase, group) for _, group in sorted(points.items())]
        for phase, points in phases.items()
    }
    merged["source"] = "spdsim calibrate: " + ", ".join(names)
    return merged


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


def cycle_fixed_entry(run: MeasuredRun, profile: dict[str, Any]) -> dict:
    """Serial per-iteration cost the phase tables miss: median of measured minus modelled iteration time."""
    from spdsim.validate import modelled_cycles_ns

    residuals = []
    for prompt in run.prompts:
        modelled_ns = modelled_cycles_ns(run, prompt, profile, without_fixed=True)
        measured = np.asarray(prompt.cycle_us, dtype=np.float64)
        count = min(len(modelled_ns), measured.size)
        residuals.append(measured[:count] - np.asarray(modelled_ns[:count], dtype=np.float64) / 1e3)
    values = np.concatenate(residuals)
    stages = run.num_stages if run.pipeline else 1
    entry = _stats(values, {"num_stages": stages})
    entry["median_us"] = max(entry["median_us"], 0.0)
    entry["p10_us"] = max(entry["p10_us"], 0.0)
    entry["p90_us"] = max(entry["p90_us"], entry["median_us"])
    return entry


def calibrate(
    bundle_paths: list[str | Path], run_paths: list[str | Path] = (), fit: bool = False
) -> dict[str, Any]:
    """The calibrated profile (schema v1, plus ``"calibration"`` provenance and, with ``fit``, ``"fit"``)."""
    names = [str(p) for p in bundle_paths]
    profile = merge_bundles([load_profile(p) for p in bundle_paths], names)
    runs = [load_run(p) for p in run_paths]
    chain_runs = [r for r in runs if not r.pipeline and r.method != "ar"]
    if chain_runs and "chain_draft" not in profile["phases"]:
        profile["phases"]["chain_draft"] = chain_draft_entries(chain_runs[0])
    fixed: dict[int, list[dict]] = {}
    for run in runs:
        if run.method == "ar" or run.pipeline:
            entry = cycle_fixed_entry(run, profile)
            fixed.setdefault(entry["num_stages"], []).append(entry)
    if fixed:
        profile["phases"]["cycle_fixed"] = [
            _combine("cycle_fixed", group) for _, group in sorted(fixed.items())
        ]
    profile["calibration"] = {
        "bundles": names,
        "runs": [run.name for run in runs],
        "date": datetime.date.today().isoformat(),
        "rule": "cycle_fixed = median(measured iteration wall - modelled iteration without cycle_fixed)",
    }
    if fit:
        profile["fit"] = {
            phase: fit_phase(phase, entries)
            for phase, entries in profile["phases"].items()
            if phase in FIT_TERMS and len(entries) >= len(FIT_TERMS[phase])
        }
    return validate_profile(profile)


def write_profile(profile: dict[str, Any], out: str | Path) -> Path:
    """Write atomically: nothing half-written on failure."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(out.name + ".part")
    staging.write_text(json.dumps(profile, indent=1, sort_keys=True) + "\n")
    staging.replace(out)
    return out


__all__ = ["STAT_FIELDS", "calibrate", "merge_bundles", "write_profile"]
