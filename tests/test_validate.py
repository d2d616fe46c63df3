"""spdsim validate: strict replay of committed H200 runs (same trace, prompt and generation lengths), the
engine and the per-iteration replay agree, fitted vs held-out roles, one-line errors for mismatched inputs."""

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spdsim.calibration.fit import calibrate, write_profile
from spdsim.calibration.measured_runs import load_run
from spdsim.calibration.replay import modelled_cycles_ns, scenario_for, validate
from spdsim.cli import app
from spdsim.contract.profile_schema import load_profile
from spdsim.engine.run import simulate

DATA = Path(__file__).resolve().parent / "data" / "fidelity"
runner = CliRunner()


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory):
    runs = [DATA / "dist_ar", DATA / "dist_spd_n2_a0.80", DATA / "gpu1_eagle3_k3_a0.80"]
    profile = calibrate([DATA / "profile_h200_qwen3-8b.json"], runs)
    return write_profile(profile, tmp_path_factory.mktemp("cal") / "profile.json")


@pytest.mark.parametrize("name", ["dist_ar", "dist_spd_n2_a0.60", "gpu1_eagle3_k5_a0.80"])
def test_engine_replay_matches_trace_and_iteration_model(profile_path, name, tmp_path):
    run = load_run(DATA / name)
    profile = load_profile(profile_path)
    prompt = run.prompts[0]
    trace = ""
    if prompt.outcomes:
        import pandas as pd

        frame = pd.read_csv(DATA / name / "trace.csv")
        trace = str(tmp_path / "t.csv")
        frame[frame["prompt_id"] == prompt.prompt_id].to_csv(trace, index=False)
    result = simulate(scenario_for(run, prompt, str(profile_path), "measured", trace), record_intervals=False)
    assert len(result.tokens) == prompt.decode_tokens
    cycles = modelled_cycles_ns(run, prompt, profile)
    assert sum(cycles) == result.end_ns  # the DES and the replayed iteration loop price the same schedule
    if prompt.outcomes and run.pipeline:
        assert sum(v.accepted for v in result.verifications) == sum(
            prompt.outcomes[: len(result.verifications)]
        )
        assert len(cycles) == len(prompt.cycle_us)  # same number of cycles as the executor ran


def test_cli_reports_fitted_and_held_out_with_signed_errors(profile_path, tmp_path):
    out = tmp_path / "cmp.csv"
    runs = [str(DATA / n) for n in ("dist_spd_n2_a0.80", "dist_spd_n2_a0.95")]
    args = [
        "validate",
        *runs,
        "--profile",
        str(profile_path),
        "--baseline",
        str(DATA / "dist_ar"),
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "fitted" in result.output and "held-out" in result.output
    comparisons = validate(runs, profile_path, DATA / "dist_ar")
    assert [c.role for c in comparisons] == ["fitted", "held-out"]
    for c in comparisons:
        m, p = c.measured, c.predicted
        assert c.error_pct("tpot_ms") == pytest.approx(100 * (p["tpot_ms"] - m["tpot_ms"]) / m["tpot_ms"])
        assert m["tpot_ms"] * m["tokens_per_s"] == pytest.approx(1e3)
    assert out.read_text().count("\n") == 3


def test_mismatched_or_bad_runs_are_one_line_errors(profile_path, tmp_path):
    broken = tmp_path / "no_tokens"
    shutil.copytree(DATA / "dist_spd_n2_a0.80", broken)
    (broken / "tokens.csv").write_text("garbage\n")
    cases = [
        (
            [str(DATA / "gpu1_eagle3_k3_a0.80"), "--baseline", str(DATA / "dist_ar")],
            "decoded different prompts",
        ),
        ([str(DATA / "dist_spd_n2_a0.80"), "--baseline", str(DATA / "dist_spd_n2_a0.95")], "not ar"),
        ([str(broken)], "tokens.csv lacks columns"),
        ([str(DATA / "dist_ar"), "--kind", "roofline"], "--kind"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["validate", *args, "--profile", str(profile_path)])
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_a_run_without_per_cycle_walls_is_compared_commit_gap_to_commit_gap(profile_path, tmp_path):
    """Single-process SPD runs record phases but no cycle wall: the measured series is then the gaps between
    commits (fill/refill cycles inside the next gap), and the replay folds its cycles the same way; calibrate
    refuses such a run in one line (its per-cycle costs cannot be separated)."""
    import pandas as pd

    from spdsim.errors import SpdsimError

    gaps = tmp_path / "gaps"
    shutil.copytree(DATA / "dist_spd_n2_a0.60", gaps)
    cycles = pd.read_csv(gaps / "cycles.csv")
    cycles.drop(columns=["cycle_us"]).to_csv(gaps / "cycles.csv", index=False)
    full, folded = load_run(DATA / "dist_spd_n2_a0.60"), load_run(gaps)
    profile = load_profile(profile_path)
    prompt, folded_prompt = full.prompts[0], folded.prompts[0]
    assert not prompt.walls_per_commit and folded_prompt.walls_per_commit
    per_cycle = modelled_cycles_ns(full, prompt, profile)
    per_commit = modelled_cycles_ns(folded, folded_prompt, profile)
    assert len(per_commit) == len(folded_prompt.cycle_us) == folded_prompt.decode_tokens
    assert sum(per_commit) == sum(per_cycle) and len(per_commit) < len(per_cycle)
    with pytest.raises(SpdsimError, match="commit gaps, not per-cycle wall times"):
        calibrate([DATA / "profile_h200_qwen3-8b.json"], [DATA / "dist_ar", gaps])
