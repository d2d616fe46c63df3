"""Smoke runs of the issue-7 studies on tiny grids: they write what their notebooks read, with sane content."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from spdsim.drivers.optimize import SearchSpace
from spdsim.engine.metrics import summarize
from spdsim.engine.run import simulate
from spdsim.scenario.files import load_runs

STUDIES = Path(__file__).resolve().parent.parent / "studies"


def load_study(name: str, monkeypatch, base: str):
    """The study module, its base-scenario builder ``base`` patched to simulate one request (speed)."""
    monkeypatch.syspath_prepend(
        str(STUDIES / name)
    )  # what `python3 studies/<name>/<name>.py` has: its folder
    spec = importlib.util.spec_from_file_location(f"study_{name}", STUDIES / name / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    build = getattr(module, base)

    def one_request(*args):
        scenario = build(*args)
        return replace(scenario, workload=replace(scenario.workload, num_requests=1))

    monkeypatch.setattr(module, base, one_request)
    return module


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_fair_hardware(tmp_path, monkeypatch):
    study = load_study("fair_hardware", monkeypatch, "base_scenario")
    meta = study.run(
        tmp_path,
        datasets=("humaneval",),
        budgets=(2,),
        map_alphas=(0.6, 0.9),
        map_budgets=(2, 3),
        allreduce_us=(0, 15, 100),
        allreduce_budget=2,
        chain_alphas=(0.4, 0.8),
        workers=1,
    )
    comparison = pd.read_csv(tmp_path / "comparison.csv")
    expected = {"AR", *study.BASELINES, "SPD (best design)", "SPD n=8 L_s=3 (authors')"}
    assert set(comparison["method"]) == expected
    within = comparison[comparison["method"] != "SPD n=8 L_s=3 (authors')"]
    assert (within["gpus"] <= 2).all() and (within["budget"] == 2).all()
    assert (comparison["speedup"] > 0.5).all()
    crossover = pd.read_csv(tmp_path / "crossover.csv")
    assert len(crossover) == 4
    ratio = crossover["spd_speedup"] / crossover["eagle3_same_alpha_speedup"]
    assert ratio.to_numpy() == pytest.approx(crossover["spd_over_eagle3"].to_numpy())
    for _, per_budget in crossover.groupby("budget"):
        assert per_budget.sort_values("alpha")["spd_speedup"].is_monotonic_increasing
    assert meta["map_closed_form_vs_des_max_abs_deviation"] < 0.02
    allreduce = pd.read_csv(tmp_path / "crossover_allreduce.csv")
    assert len(allreduce) == 6
    for _, per_alpha in allreduce.groupby("alpha"):  # slower collectives never help the TP baselines
        assert per_alpha.sort_values("allreduce_us")["spd_over_eagle3"].is_monotonic_increasing
    gap = pd.read_csv(tmp_path / "crossover_acceptance.csv")
    assert len(gap) == 4
    for _, per_chain_alpha in gap.groupby("eagle3_alpha"):  # a better SPD drafter only helps SPD
        assert per_chain_alpha.sort_values("spd_alpha")["spd_over_eagle3"].is_monotonic_increasing
    for name in ("by_dataset.png", "crossover.png", "crossover_allreduce.png", "crossover_acceptance.png"):
        assert_png(tmp_path / name)
    # the written scenario file reproduces a row of the table exactly
    runs = load_runs([tmp_path / "scenarios.json"], methods=("humaneval:spd-n8-l3-authors",))
    tokens_per_s = summarize(simulate(runs[0].scenario, record_intervals=False))["tokens_per_s"]
    row = comparison[comparison["method"] == "SPD n=8 L_s=3 (authors')"].iloc[0]
    assert tokens_per_s == pytest.approx(row["tokens_per_s"], rel=1e-12)


def test_design_search(tmp_path, monkeypatch):
    study = load_study("design_search", monkeypatch, "base_scenario")
    space = SearchSpace(stages=(2, 4, 8), spec_layers=(1, 3))
    study.run(
        tmp_path,
        models=("qwen3.5-4b",),
        hardware=("h100",),
        datasets=("humaneval",),
        budgets=(8,),
        space=space,
        finalists=3,
        workers=1,
    )
    finalists = pd.read_csv(tmp_path / "finalists.csv")
    ranked = finalists[finalists["rank"] != "ref"]
    assert list(ranked["rank"].astype(int)) == [1, 2, 3]
    assert ranked["simulated_tokens_per_s"].is_monotonic_decreasing
    assert ranked["margin"].iloc[0] == 0 and (ranked["margin"] >= 0).all()
    assert (ranked["gpus"] <= 8).all()
    reference = finalists[finalists["rank"] == "ref"].iloc[0]
    assert (reference["num_stages"], reference["spec_layers"], reference["gpus"]) == (8, 3, 9)
    summary = pd.read_csv(tmp_path / "summary.csv").iloc[0]
    assert summary["best_over_reference"] == pytest.approx(
        summary["best_speedup"] / summary["reference_speedup"]
    )
    candidates = pd.read_csv(tmp_path / "candidates.csv")
    assert len(candidates) == summary["designs_priced"]
    assert candidates["closed_form_tokens_per_s"].is_monotonic_decreasing
    for name in ("landscape.png", "best_vs_reference.png"):
        assert_png(tmp_path / name)


def test_sensitivity(tmp_path, monkeypatch):
    study = load_study("sensitivity", monkeypatch, "roofline_base")
    parameters = ("PDM forward (SPD drafter)", "acceptance alpha", "chain draft step")
    study.run(tmp_path, configs=("SPD n=8 L_s=3 (authors')",), parameters=parameters, workers=1)
    frame = pd.read_csv(tmp_path / "sensitivity.csv").set_index("parameter")
    base = frame["base_speedup"].iloc[0]
    assert base == pytest.approx(frame["roofline_speedup"].iloc[0], rel=5e-3)  # freezing keeps the setting
    pdm = frame.loc["PDM forward (SPD drafter)"]
    assert pdm["low_speedup"] >= base > pdm["high_speedup"]  # a slower PDM (+20%) is the slowest cycle member
    assert pdm["low_value"] == pytest.approx(0.8 * pdm["base_value"], abs=1)
    alpha = frame.loc["acceptance alpha"]
    assert alpha["high_speedup"] > base > alpha["low_speedup"]
    assert frame.loc["chain draft step", "swing"] == 0.0  # a chain drafter's latency cannot move SPD
    assert_png(tmp_path / "tornado.png")


def test_serving_load(tmp_path, monkeypatch):
    """Two rates, twelve requests: the table has one row per method and rate, with the serving metrics."""
    monkeypatch.syspath_prepend(str(STUDIES / "serving_load"))
    spec = importlib.util.spec_from_file_location(
        "study_serving_load", STUDIES / "serving_load" / "serving_load.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    frame = module.run(tmp_path, rates=(5.0, 50.0), requests=12)
    assert len(frame) == 2 * len(module.METHODS)
    assert (frame["gpus"] == 8).all()
    assert (frame["p99_tpot_ms"] >= frame["median_tpot_ms"]).all()
    assert (frame["request_goodput"] <= frame["request_throughput"] + 1e-9).all()
    assert (tmp_path / "serving_load.csv").is_file() and (tmp_path / "metadata.json").is_file()
