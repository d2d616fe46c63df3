"""studies/fidelity_1gpu: the held-out order, --resume (per-run GPU check, phases added to a kept bundle), and
analyze.py on a real (CPU) campaign."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "studies" / "fidelity_1gpu"))

from measure import _same_gpu, held_out_order, measured_on, spd_spec_layers, stack_dumps  # noqa: E402

from executor.profile import ProfileGrid  # noqa: E402

WIDTHS, ALPHAS = (2, 3, 5, 7), (0.6, 0.8, 0.9)


def test_spd_runs_take_the_bundle_s_shallowest_drafter_depth():
    assert spd_spec_layers(ProfileGrid(spec_layers=(3, 2, 4))) == 2
    assert spd_spec_layers(ProfileGrid(spec_layers=())) == 1  # no drafter phase: the executor's default


def test_held_out_order_is_every_unfitted_pair_once_and_any_prefix_spreads():
    order = held_out_order(WIDTHS, ALPHAS, [(3, 0.8)])
    assert sorted(order) == sorted((k, a) for k in WIDTHS for a in ALPHAS if (k, a) != (3, 0.8))
    first_six = order[:6]
    assert {k for k, _ in first_six} == set(WIDTHS)
    assert {a for _, a in first_six} == set(ALPHAS)


def test_measured_on_reads_only_finished_labelled_runs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert measured_on(run) is None
    (run / "config.json").write_text(json.dumps({"gpu": "NVIDIA H200"}))
    assert measured_on(run) is None  # no summary: unfinished
    (run / "summary.json").write_text("{}")
    assert measured_on(run) == "NVIDIA H200"
    (run / "config.json").write_text("{}")
    assert measured_on(run) is None


def test_resume_needs_the_same_gpu_and_the_same_layers(tmp_path):
    """A bundle measured with the fused layer is not resumed by a compiled campaign (and the reverse); a campaign
    from before --layers existed counts as compiled."""
    assert not _same_gpu(tmp_path, "NVIDIA H100")  # nothing measured
    meta = tmp_path / "measure.json"
    meta.write_text(json.dumps({"hardware": {"gpu": "NVIDIA H100"}}))
    assert _same_gpu(tmp_path, "NVIDIA H100") and not _same_gpu(tmp_path, "NVIDIA H100", "fused")
    assert not _same_gpu(tmp_path, "NVIDIA H200")
    meta.write_text(json.dumps({"hardware": {"gpu": "NVIDIA H100"}, "layers": "fused+pdl"}))
    assert _same_gpu(tmp_path, "NVIDIA H100", "fused+pdl") and not _same_gpu(tmp_path, "NVIDIA H100")


def _measure(out: Path) -> str:
    command = [
        sys.executable,
        str(ROOT / "studies/fidelity_1gpu/measure.py"),
        *("--models", "random:tiny-qwen3", "--device", "cpu", "--limit", "1", "--new-tokens", "8"),
        *("--chain-k", "3", "--spd-stages", "2", "--out", str(out), "--resume"),
    ]
    return subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout


def test_resume_keeps_runs_of_this_gpu_only_and_analyze_holds_out_the_rest(tmp_path):
    first = _measure(tmp_path)
    assert "kept" not in first
    folder = tmp_path / "tiny-qwen3"
    runs = sorted(p.name for p in folder.iterdir() if (p / "summary.json").is_file())
    assert runs == ["ar", "eagle3_k3_a0.60", "eagle3_k3_a0.80", "eagle3_k3_a0.90", "spd_n2_a0.80"]
    config = folder / "spd_n2_a0.80" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "gpu": "another GPU"}))
    assert json.loads(config.read_text())["spec_layers"] == 1  # the CPU bundle's one drafter depth
    other_depth = folder / "eagle3_k3_a0.60" / "config.json"  # a run of other options than asked is redone
    other_depth.write_text(json.dumps({**json.loads(other_depth.read_text()), "synthetic_alpha": 0.5}))
    bundle_path = folder / "profile.json"
    bundle = json.loads(bundle_path.read_text())
    layers_before = bundle["phases"]["layers"]
    del bundle["phases"]["stream_overlap"]  # a bundle from before the phase existed
    bundle_path.write_text(json.dumps(bundle))
    second = _measure(tmp_path)
    bundle = json.loads(bundle_path.read_text())
    assert "added stream_overlap to the kept bundle" in second
    assert bundle["phases"]["stream_overlap"] and bundle["phases"]["layers"] == layers_before
    added = json.loads((folder / "measure.json").read_text())["added_phases"]
    assert [entry["phases"] for entry in added] == [["stream_overlap"]]
    assert str(ROOT) not in added[0]["command"]
    kept = {line.split()[2].rstrip(":") for line in second.splitlines() if "kept (--resume)" in line}
    assert kept == {"profile", *runs} - {"spd_n2_a0.80", "eagle3_k3_a0.60"}
    assert measured_on(folder / "spd_n2_a0.80") == measured_on(folder / "ar")

    analyze = [sys.executable, str(ROOT / "studies/fidelity_1gpu/analyze.py"), "--results", str(tmp_path)]
    report = subprocess.run(analyze, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    roles = {
        line.split("|")[2].strip(): line.split("|")[3].strip()
        for line in report.splitlines()
        if line.startswith("| tiny-qwen3 ")
    }
    assert roles["ar"] == roles["eagle3_k3_a0.80"] == "fitted"
    assert roles["eagle3_k3_a0.60"] == roles["eagle3_k3_a0.90"] == "held-out"
    speed = json.loads((tmp_path / "speed.json").read_text())[0]
    ar_steps = json.loads(bundle_path.read_text())["phases"]["ar_step"]
    assert speed["ar_step_bundle_us"] == min(ar_steps, key=lambda e: e["kv_len"])["median_us"]
    assert speed["ar_step_fraction_of_copy_bw"] > 0 and "AR step in the bundle" in report
    overlap = speed["spd_one_gpu_overlap"]
    assert [row["run"] for row in overlap] == ["spd_n2_a0.80"]
    assert overlap[0]["saturated_phase_sum_us_median"] > 0 and overlap[0]["cycle_wall_us_mean"] > 0
    assert "spd_n2_a0.80 (one GPU, a stream per stage)" in report


def test_stack_dumps_print_where_a_long_run_is_and_stop_after_it(tmp_path):
    import time

    log = tmp_path / "stacks.log"
    with log.open("w") as file:
        with stack_dumps(0.05, file=file):
            time.sleep(0.3)
        size = log.stat().st_size
        time.sleep(0.2)
    text = log.read_text()
    assert "test_stack_dumps_print_where_a_long_run_is_and_stop_after_it" in text
    assert log.stat().st_size == size  # cancelled with the block
    with stack_dumps(0):
        pass
