"""spdsim calibrate on committed H200 measurements: merged tables, per-iteration fixed cost derived from runs,
the optional fit, and one-line errors for bad or mismatched inputs."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from spdsim.cli import app
from spdsim.config import LatencySpec, ModelShape
from spdsim.latency import FittedLatency, MeasuredLatency
from spdsim.profile_schema import load_profile

DATA = Path(__file__).resolve().parents[1] / "studies" / "results" / "fidelity"
BUNDLE = DATA / "profile_h200_qwen3-8b.json"
runner = CliRunner()


def calibrate(tmp_path, *extra):
    out = tmp_path / "profile.json"
    result = runner.invoke(app, ["calibrate", str(BUNDLE), *extra, "--out", str(out)])
    return result, out


def test_fixed_cost_is_the_median_residual_of_ar_steps_without_one_time_steps(tmp_path):
    result, out = calibrate(tmp_path, "--run", str(DATA / "dist_ar"))
    assert result.exit_code == 0, result.output
    profile = load_profile(out)
    assert profile["calibration"]["runs"] == ["dist_ar"]
    [entry] = profile["phases"]["cycle_fixed"]
    assert entry["num_stages"] == 1
    # the AR step the simulator models: embed + all layers + head, interpolated at each step's KV length
    config = json.loads((DATA / "dist_ar" / "config.json").read_text())
    cycles = pd.read_csv(DATA / "dist_ar" / "cycles.csv")
    latency = MeasuredLatency(
        ModelShape(**profile["model"]), None, LatencySpec(kind="measured"), load_profile(BUNDLE)
    )
    limit_us = 3.0 * float(np.percentile(cycles["step_us"], 10))  # one-time steps: CUDA-graph captures
    residuals, one_time = [], 0
    for prompt_id, rows in cycles.groupby("prompt_id", sort=False):
        start = config["prompt_tokens"][prompt_id]
        for c, step_us in enumerate(rows.sort_values("cycle")["step_us"]):
            if step_us > limit_us:
                one_time += 1
                continue
            modelled = latency.target_ns(1, start + c) / 1e3
            residuals.append(step_us - modelled)
    assert one_time == len(config["prompt_tokens"])  # one capture per prompt in this run
    assert entry["samples"] == len(residuals)
    assert abs(entry["median_us"] - float(np.median(residuals))) < 1e-6


def test_spd_and_chain_runs_add_their_phases_and_fit_is_readable(tmp_path):
    result, out = calibrate(
        tmp_path,
        "--run",
        str(DATA / "dist_spd_n2_a0.80"),
        "--run",
        str(DATA / "gpu1_eagle3_k3_a0.80"),
        "--fit",
    )
    assert result.exit_code == 0, result.output
    profile = load_profile(out)
    assert [e["num_stages"] for e in profile["phases"]["cycle_fixed"]] == [2]
    assert "chain_draft" in profile["phases"]
    shape = ModelShape(**profile["model"])
    fitted = FittedLatency(shape, None, LatencySpec(kind="fitted"), profile)
    table = MeasuredLatency(shape, None, LatencySpec(kind="measured"), profile)
    for layers in (18, 36):  # a 4-term fit of 12 points stays within a few % of the table
        assert abs(fitted.layers_ns(layers, 1, 300) / table.layers_ns(layers, 1, 300) - 1) < 0.05


def test_merging_a_bundle_with_itself_keeps_its_medians(tmp_path):
    result, out = calibrate(tmp_path, str(BUNDLE))
    assert result.exit_code == 0, result.output
    merged, original = load_profile(out), load_profile(BUNDLE)
    for phase, entries in original["phases"].items():
        coords = [c for c in entries[0] if not c.endswith("_us") and c != "samples"]
        by_point = {tuple(e[c] for c in coords): e for e in merged["phases"][phase]}
        assert len(by_point) == len(entries)
        for entry in entries:
            twin = by_point[tuple(entry[c] for c in coords)]
            assert twin["median_us"] == entry["median_us"] and twin["samples"] == 2 * entry["samples"]


def test_bad_or_mismatched_inputs_are_one_line_errors(tmp_path):
    other = json.loads(BUNDLE.read_text())
    other["model"]["num_layers"] = 28
    mismatched = tmp_path / "other.json"
    mismatched.write_text(json.dumps(other))
    broken = tmp_path / "broken_run"
    shutil.copytree(DATA / "dist_ar", broken)
    (broken / "cycles.csv").unlink()
    cases = [
        ([str(BUNDLE), str(mismatched)], "model.num_layers=28"),
        ([str(tmp_path / "missing.json")], "no such file"),
        ([str(BUNDLE), "--run", str(broken)], "missing cycles.csv"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["calibrate", *args, "--out", str(tmp_path / "p.json")])
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / "p.json").exists()
