"""studies/fidelity/fidelity_x4.py (issue 6): 4-GPU runs are held out of the calibration, costs per stage count are held
at n = 2 for n = 3, 4, the validation runs with or without the 4-GPU call's data, and the diagnoses (drafter
shapes per cycle, one-time iterations, per-prompt replay) follow the controller's schedule."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pandas as pd

STUDIES = Path(__file__).resolve().parent.parent / "studies"
MEASURED = STUDIES / "fidelity" / "results"


def load_fidelity(monkeypatch):
    monkeypatch.syspath_prepend(str(STUDIES / "fidelity"))
    spec = importlib.util.spec_from_file_location(
        "study_fidelity_x4", STUDIES / "fidelity" / "fidelity_x4.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_stage_costs_held_at_the_largest_fitted_stage_count(monkeypatch):
    fidelity = load_fidelity(monkeypatch)
    stats = {"p10_us": 1.0, "p90_us": 3.0, "samples": 5}
    profile = {
        "phases": {
            "cycle_fixed": [
                {"num_stages": 1, "median_us": 200.0, **stats},
                {"num_stages": 2, "median_us": 350.0, **stats},
            ],
            "layers": [{"layers": 18, "query_tokens": 1, "kv_len": 128, "median_us": 9.0, **stats}],
        }
    }
    held = fidelity.hold_stage_phases(profile, (3, 4))
    by_n = {e["num_stages"]: e["median_us"] for e in held["phases"]["cycle_fixed"]}
    assert by_n == {1: 200.0, 2: 350.0, 3: 350.0, 4: 350.0}
    assert "verify_fixed" not in held["phases"] and len(held["phases"]["layers"]) == 1


def test_x4_validation_skips_without_data(monkeypatch, tmp_path, capsys):
    fidelity = load_fidelity(monkeypatch)
    assert fidelity.validate_x4(tmp_path) is None
    assert "not measured yet" in capsys.readouterr().out
    assert not (tmp_path / "validation.csv").exists()


def test_x4_validation_holds_out_every_4gpu_run(monkeypatch, tmp_path):
    """Committed 2-GPU measurements renamed into the 4-GPU call's layout (the replay does not care which GPUs)."""
    fidelity = load_fidelity(monkeypatch)
    layout = {
        "profile_h200_qwen3-8b.json": "profile_h200_qwen3-8b.json",
        "dist2_ar": "dist_ar",
        "dist2_spd_n2_colo_a0.80": "dist_spd_n2_a0.80",
        "dist2_spd_n2_colo_a0.60": "dist_spd_n2_a0.60",
        "dist4_ar": "dist_ar",
        "dist4_spd_n4_colo_a0.85": "dist_spd_n2_a0.95",
    }
    for name, source in layout.items():
        copy = shutil.copytree if (MEASURED / source).is_dir() else shutil.copy
        copy(MEASURED / source, tmp_path / name)
    validation = fidelity.validate_x4(tmp_path).set_index("run")
    assert set(validation.index) == set(layout) - {"profile_h200_qwen3-8b.json"}
    assert validation.loc["dist2_spd_n2_colo_a0.80", "role"] == "fitted"
    assert validation.loc["dist2_spd_n2_colo_a0.60", "role"] == "held-out"
    assert (validation.loc[["dist4_ar", "dist4_spd_n4_colo_a0.85"], "role"] == "held-out, 4 GPUs").all()
    assert validation.loc["dist4_ar", "lossless_vs_ar"] == "3/3"
    assert validation.predicted_tpot_ms.notna().all()
    calibration = json.loads((tmp_path / "profile_calibrated_qwen3-8b.json").read_text())["calibration"]
    assert not any(run.startswith("dist4") for run in calibration["runs"])
    assert len(pd.read_csv(tmp_path / "validation.csv")) == len(validation)
    assert (tmp_path / "fidelity.png").stat().st_size > 10_000
    for name in ("one_time.csv", "prompts.csv", "phases.csv"):
        assert len(pd.read_csv(tmp_path / name)) > 0


def test_drafter_rows_follow_the_controller_schedule(monkeypatch):
    """n = 2: the first cycle drafts from the newest token alone; after a verification the pending token adds a
    row: 3 rows after an accept (two in flight), 2 after a reject or the fill cycle."""
    from spdsim.calibration.measured_runs import load_run

    fidelity = load_fidelity(monkeypatch)
    run = load_run(MEASURED / "dist_spd_n2_a0.60")
    rows = fidelity.drafter_rows(run)
    for prompt in run.prompts:
        mine = rows[prompt.prompt_id]
        assert len(mine) == len(prompt.cycle_us) and mine[0] == 1 and set(mine[1:]) <= {2, 3}
        followed = prompt.outcomes[
            : len(prompt.cycle_us) - 1
        ]  # a verification the prompt's next cycle follows
        assert mine.count(3) <= sum(followed) <= mine.count(3) + 1


def test_one_time_rows_count_first_seen_shapes_once_per_session(monkeypatch):
    fidelity = load_fidelity(monkeypatch)
    session = ("dist_spd_n2_a0.60", "dist_spd_n2_a0.80", "dist_spd_n2_a0.95")
    table = pd.DataFrame(fidelity.one_time_rows(MEASURED, session))
    assert len(table) == 9 and (table.one_time_and_first_seen <= table.one_time_cycles).all()
    assert (table.one_time_and_first_seen <= table.first_seen_shapes).all()
    # the same prompts (same head capacities) again: no shape of the later runs is new
    assert (table[table.run != session[0]].first_seen_shapes == 0).all()
    assert (table[table.run == session[0]].first_seen_shapes == 3).all()  # rows 1, 2, 3 per capacity
    assert table.head_capacity.tolist()[:3] == [177 + 64 + 2 + 8, 300 + 64 + 2 + 8, 342 + 64 + 2 + 8]
    assert (table.one_time_ms >= 0).all() and table.one_time_ms.sum() > 0


def test_per_prompt_replay_adds_up_to_the_run(monkeypatch):
    from spdsim.calibration.fit import calibrate
    from spdsim.calibration.measured_runs import load_run
    from spdsim.calibration.replay import modelled_cycles_ns

    fidelity = load_fidelity(monkeypatch)
    profile = calibrate([MEASURED / "profile_h200_qwen3-8b.json"], [MEASURED / "dist_spd_n2_a0.80"])
    table = pd.DataFrame(fidelity.prompt_rows(MEASURED, "dist_spd_n2_a0.95", profile))
    run = load_run(MEASURED / "dist_spd_n2_a0.95")
    tokens = [p.decode_tokens for p in run.prompts]
    assert abs((table.measured_tpot_ms * tokens).sum() - run.decode_us / 1e3) < 1e-6
    modelled_ms = sum(sum(modelled_cycles_ns(run, p, profile)) for p in run.prompts) / 1e6
    assert abs((table.predicted_tpot_ms * tokens).sum() - modelled_ms) < 1e-6
    assert {"control_median_us", "draft_median_us", "stage1_median_us"} <= set(table.columns)
