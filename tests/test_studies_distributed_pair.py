"""studies/distributed_prediction/run_pair.py (issue 18) end to end in its --tiny mode (CPU, gloo, 2 ranks, tiny
random model): every step writes its run directories with per-cycle phase timings, the comparison table has one row
per model's AR and per (model, α) with the held-out rows marked and no p90 made up, SmolLM2's stand-in is lossless,
the drafter-on-its-own-GPU variant is refused with its reason, and an existing folder is only gone on with
--resume (keeping the finished steps)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from executor.rundir import RUN_FILES

STUDY = Path(__file__).resolve().parent.parent / "studies" / "distributed_prediction"
RUNNER = STUDY / "run_pair.py"
PREDICTIONS = Path(__file__).resolve().parent / "data" / "distributed_prediction" / "predictions_h100.json"
SPD_RUNS = [f"pair_{m}_spd_n2_colo_a{a:.2f}" for m in ("qwen3-8b", "qwen3-4b") for a in (0.6, 0.8, 0.95)]
ALL_RUNS = ["ar_qwen3-8b", "ar_qwen3-4b", *SPD_RUNS, "smol_ar", "smol_spd_n2_colo"]


def run_pair(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RUNNER), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    out, pack = root / "run", root / "results.tgz"
    options = ("--prompts", "2", "--new-tokens", "6", "--pack", str(pack), "--predictions", str(PREDICTIONS))
    done = run_pair("--tiny", "--out", str(out), *options)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, pack, done.stdout


def table_rows(out: Path) -> list[list[str]]:
    lines = (out / "comparison.md").read_text().splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| qwen3-")]
    return [row for row in rows if row[1] in ("AR (1 GPU)", "SPD n=2 co-located")]


def test_every_run_directory_has_the_run_files_and_per_cycle_phases(tiny_run):
    out, _, _ = tiny_run
    for name in ALL_RUNS:
        assert set(RUN_FILES) <= {p.name for p in (out / name).iterdir()}, name
    header = (out / SPD_RUNS[1] / "cycles.csv").read_text().splitlines()[0].split(",")
    assert {"state", "cycle_us", "stage0_us", "stage1_us", "draft_us", "wait_us"} <= set(header)
    config = json.loads((out / SPD_RUNS[1] / "config.json").read_text())
    assert config["synthetic_alpha"] == 0.8 and config["world_size"] == 2 and config["warmup_prompts"] >= 1
    assert config["held_out"] is False and config["tiny"] is True
    assert json.loads((out / SPD_RUNS[2] / "config.json").read_text())["held_out"] is True  # α = 0.95
    assert json.loads((out / SPD_RUNS[3] / "config.json").read_text())["held_out"] is True  # qwen3-4b
    summary = json.loads((out / SPD_RUNS[1] / "summary.json").read_text())
    assert summary["nominal_alpha"] == 0.8 and 0.0 <= summary["realised_alpha"] <= 1.0


def test_comparison_table_rows_held_out_marks_and_missing_p90(tiny_run):
    out, _, _ = tiny_run
    rows = table_rows(out)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (model, run, alpha)
        for model in ("qwen3-8b", "qwen3-4b")
        for run, alpha in [("AR (1 GPU)", "—")] + [("SPD n=2 co-located", a) for a in ("0.6", "0.8", "0.95")]
    ]
    held = {(r[0], r[2]) for r in rows if r[4] == "**held out**"}
    assert held == {("qwen3-8b", "0.95"), *[("qwen3-4b", a) for a in ("—", "0.6", "0.8", "0.95")]}
    for row in rows[1:4] + rows[5:]:
        assert row[11] == "not in prediction file"  # the committed predictions have no p90
        # TPOT and speedup errors are signed percentages
        assert row[7][0] in "+-" and row[7].endswith("%") and row[16].endswith("%")
    text = (out / "comparison.md").read_text()
    assert "2/2 prompts token-identical to AR" in text
    assert "needs 3 ranks (controller + 2 stages), the pair has 2 GPUs" in text
    assert "| control word (9 x int64) | 72 |" in text


def test_steps_are_recorded_and_packed_without_weights(tiny_run):
    out, pack, stdout = tiny_run
    steps = {r["step"]: r for r in json.loads((out / "steps.json").read_text())}
    assert steps.pop("spd-own-gpu")["status"] == "skipped"
    assert set(steps) == {
        "p2p",
        "ar-qwen3-8b",
        "ar-qwen3-4b",
        "smol-head",
        "spd-qwen3-8b",
        "smol-spd",
        "spd-qwen3-4b",
    }
    assert all(r["status"] == "done" for r in steps.values()), steps
    assert "] spd-qwen3-8b: SPD qwen3-8b a=0.8: realised a" in stdout  # per-step lines with the elapsed time
    with tarfile.open(pack) as tar:
        names = tar.getnames()
    assert "results/comparison.md" in names and "results/logs/smol-spd.log" in names
    assert not [n for n in names if n.endswith(".pt")] and any(
        n.startswith("results/smol_head/") for n in names
    )


def test_an_existing_folder_is_refused_unless_resumed(tiny_run, tmp_path):
    out, _, _ = tiny_run
    refused = run_pair("--tiny", "--out", str(out))
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0
    assert "exists and is not empty" in refused.stderr
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("not ours")
    refused = run_pair("--tiny", "--out", str(stranger), "--resume")
    assert refused.returncode == 2 and "was not made by run_pair.py" in refused.stderr
    assert (stranger / "notes.txt").read_text() == "not ours" and len(list(stranger.iterdir())) == 1
    before = json.loads((out / "steps.json").read_text())
    resumed = run_pair("--tiny", "--out", str(out), "--resume", "--predictions", str(PREDICTIONS), timeout=60)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((out / "steps.json").read_text()) == before  # nothing ran again
    assert "start (" not in resumed.stdout
    assert (
        "SPD qwen3-8b" not in resumed.stdout and "| qwen3-8b | SPD n=2 co-located | 0.8 |" in resumed.stdout
    )


def test_bad_options_are_one_line_errors(tmp_path):
    for args in (
        ["--models", "qwen3-70b"],
        ["--alphas", "0.8,1.5"],
        ["--smol-head", str(tmp_path / "none.pt")],
    ):
        done = run_pair("--tiny", "--out", str(tmp_path / "x"), *args, timeout=60)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert not (tmp_path / "x").exists()


def study_module(name: str):
    """A module of the study folder, loaded under a name of its own, with the folder on sys.path while it loads
    (what `python3 studies/distributed_prediction/run_pair.py` has)."""
    spec = importlib.util.spec_from_file_location(f"pair_study_{name}", STUDY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    sys.path.insert(0, str(STUDY))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(STUDY))
    return module


def test_the_runs_are_the_predicted_grid():
    """The runner's models and α are those of predict.py's rows (two homes held equal here)."""
    steps, predict = study_module("pair_steps"), study_module("predict")
    assert tuple(steps.MODEL_SPECS) == predict.MODELS and steps.ALPHAS == predict.ALPHAS


def test_the_prediction_file_follows_the_gpu_and_errors_are_signed():
    module = study_module("pair_compare")
    assert (
        module.pick_predictions("NVIDIA H100 80GB HBM3")[0] == STUDY / "results" / "h100" / "predictions.json"
    )
    assert module.pick_predictions("NVIDIA H200")[0] == STUDY / "results" / "predictions.json"
    cell = module.Cell(predicted=3.3, measured=3.0)
    assert cell.error == pytest.approx(0.1) and cell.columns()[2] == "+10.0%"
    missing = module.Cell(None, 3.0, why_predicted="not in prediction file")
    assert missing.columns()[0] == "not in prediction file" and missing.error is None
