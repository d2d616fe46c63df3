"""Embedded profiles and acceptance presets: implied alphas reproduce the published derivations."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spdsim.errors import SpdsimError
from spdsim.formulas import alpha_from_chain_tau, chain_acceptance_length, optimal_gamma
from spdsim.scenario.files import load_runs
from spdsim.scenario.presets import (
    alpha_from_pipeline_speedup,
    catalog,
    get_hardware,
    get_model,
    get_preset,
    hardware_datasheet,
    hardware_names,
    load_presets,
    model_names,
    read_preset_file,
)

# docs/spd.md 5.3 (implied alpha, two decimals): (model, config) -> overall, MT, GSM8K, HumanEval
SPD_IMPLIED = {
    ("qwen3.5-4b", "spd-n4-l4"): (0.83, 0.73, 0.82, 0.91),
    ("qwen3.5-4b", "spd-n8-l4"): (0.82, 0.71, 0.80, 0.89),
    ("qwen3.5-4b", "spd-n8-l3"): (0.81, 0.70, 0.79, 0.88),
    ("qwen3.5-4b", "spd-n8-l2"): (0.80, 0.68, 0.78, 0.88),
    ("qwen3.5-4b", "spd-n16-l2"): (0.78, 0.66, 0.75, 0.86),
    ("qwen3.5-9b", "spd-n4-l4"): (0.84, 0.74, 0.84, 0.92),
    ("qwen3.5-9b", "spd-n8-l3"): (0.83, 0.71, 0.81, 0.90),
    ("qwen3.5-9b", "spd-n16-l2"): (0.79, 0.67, 0.76, 0.87),
}
# docs/baselines.md F8: preset -> implied alpha (two decimals)
CHAIN_IMPLIED = {
    "qwen3.5-4b/overall/eagle3-k3": 0.68,
    "qwen3.5-4b/overall/eagle3-k7": 0.64,
    "qwen3.5-4b/overall/eagle3-k15": 0.58,
    "qwen3.5-9b/overall/eagle3-k3": 0.74,
    "qwen3.5-9b/overall/eagle3-k7": 0.70,
    "qwen3.5-9b/overall/eagle3-k15": 0.65,
    "gpt-oss-120b/mt_bench/peagle-k5": 0.66,
    "gpt-oss-120b/humaneval/peagle-k5": 0.73,
    "gpt-oss-120b/gsm8k/peagle-k5": 0.78,
    "deepseek-v3/overall/mtp-k7": 0.71,
    "qwen3.5-9b/gsm8k/mtp-k3-iid": 0.86,
}


@pytest.mark.parametrize(("key", "expected"), SPD_IMPLIED.items())
def test_spd_presets_reproduce_the_implied_alpha_table(key, expected):
    model, config = key
    presets = load_presets()
    for dataset, alpha in zip(("overall", "mt_bench", "gsm8k", "humaneval"), expected, strict=True):
        preset = presets[f"{model}/{dataset}/{config}"]
        # the table is rounded to two decimals (a few entries by more than half a unit): within 0.006
        assert preset.acceptance["alpha"] == pytest.approx(alpha, abs=0.006)
        assert preset.method["name"] == "spd"


@pytest.mark.parametrize(("name", "expected"), CHAIN_IMPLIED.items())
def test_chain_presets_reproduce_f8(name, expected):
    assert get_preset(name).acceptance["alpha"] == pytest.approx(expected, abs=0.006)


def test_every_preset_has_a_source_and_valid_acceptance():
    presets = load_presets()
    assert len(presets) > 150
    for preset in presets.values():
        assert preset.source.strip()
        acc = preset.acceptance
        if acc["kind"] == "iid":
            assert 0.0 <= acc["alpha"] <= 1.0
        elif acc["kind"] == "spd-state":
            assert 0.0 <= acc["alpha_saturated"] <= 1.0 and 0.0 <= acc["alpha_refill"] <= 1.0
        else:
            assert all(0.0 <= r <= 1.0 for r in acc["rates"])


def test_flagship_and_required_presets_exist():
    presets = load_presets()
    for dataset in ("overall", "mt_bench", "gsm8k", "humaneval"):
        assert f"qwen3.5-4b/{dataset}/spd-n8-l3" in presets
        assert f"qwen3.5-4b/{dataset}/eagle3-k7" in presets
    families = {p.method["name"] for p in presets.values()}
    assert {"spd", "eagle3", "peagle", "mtp", "specdecpp", "dflash", "ppsd", "draft-model"} <= families


@given(alpha=st.floats(0.01, 0.99), k=st.integers(1, 16))
def test_chain_inversion_round_trips(alpha, k):
    assert alpha_from_chain_tau(k, chain_acceptance_length(alpha, k)) == pytest.approx(alpha, abs=1e-6)


@given(alpha=st.floats(0.0, 1.0), n=st.integers(2, 16))
def test_pipeline_inversion_round_trips(alpha, n):
    speedup = n / (1 + (n - 1) * (1 - alpha))
    assert alpha_from_pipeline_speedup(n, speedup) == pytest.approx(alpha, abs=1e-9)


def test_sd_optimal_speedup_matches_f2_table():
    # docs/baselines.md F2: alpha 0.8, c 0.1 -> S 2.47; alpha 0.6, c 0.01 -> 2.30; alpha 0.9, c 0.2 -> 2.37
    assert optimal_gamma(0.8, 0.1)[2] == pytest.approx(2.47, abs=0.005)
    assert optimal_gamma(0.6, 0.01)[2] == pytest.approx(2.30, abs=0.005)
    assert optimal_gamma(0.9, 0.2)[2] == pytest.approx(2.37, abs=0.005)


def test_hardware_and_models_are_embedded_with_sources():
    assert {"h100", "h200"} <= set(hardware_names())
    assert get_hardware("h100").mem_bandwidth_gbps == 3020.0
    assert "offline-assets" in get_hardware("h100").source
    assert get_hardware("H200").mem_bandwidth_gbps == 4800.0
    assert {"qwen3.5-4b", "qwen3.5-9b", "qwen3-8b", "llama-3.1-8b"} <= set(model_names())
    assert get_model("qwen3.5-4b").num_layers == 32
    assert get_model("qwen3-8b").num_layers == 36
    assert get_model("llama-3.1-8b").intermediate_size == 14336
    for section in ("hardware", "models", "presets", "profiles"):
        headers, rows = catalog(section)
        assert rows and all(row[-1] for row in rows), section


def test_unknown_names_list_the_allowed_ones():
    with pytest.raises(SpdsimError, match="allowed: a100-80gb, b200, h100-2node-100g, "):
        get_hardware("a100")
    with pytest.raises(SpdsimError, match="qwen3.5-4b"):
        get_model("gpt-5")
    with pytest.raises(SpdsimError, match="qwen3.5-4b/overall/spd-n8-l3"):
        get_preset("qwen3.5-4b/overall/spd-n3")


def test_a_dropped_preset_file_is_loaded(tmp_path):
    doc = {
        "kind": "spdsim.acceptance-presets",
        "schema_version": 1,
        "presets": [
            {
                "name": "my-model/humaneval/spd",
                "method": {"name": "spd", "num_stages": 2, "spec_layers": 1},
                "acceptance": {"kind": "spd-state", "alpha_saturated": 0.7, "alpha_refill": 0.6},
                "source": "test",
            }
        ],
    }
    (tmp_path / "measured.json").write_text(json.dumps(doc))
    presets = load_presets([tmp_path])
    assert presets["my-model/humaneval/spd"].acceptance["alpha_refill"] == 0.6
    with pytest.raises(SpdsimError, match="defined twice"):
        load_presets([tmp_path, tmp_path])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"kind": "other", "schema_version": 1, "presets": []}', "kind"),
        (
            '{"kind": "spdsim.acceptance-presets", "schema_version": 9, "presets": []}',
            "schema_version",
        ),
        (
            '{"kind": "spdsim.acceptance-presets", "schema_version": 1, "presets": '
            '[{"name": "x", "method": {"name": "spd"}, "source": "", "acceptance": {"alpha": 0.5}}]}',
            "source",
        ),
        (
            '{"kind": "spdsim.acceptance-presets", "schema_version": 1, "presets": '
            '[{"name": "x", "method": {"name": "nope"}, "source": "s", "acceptance": {"alpha": 0.5}}]}',
            "unknown method",
        ),
    ],
)
def test_malformed_preset_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SpdsimError, match=message) as info:
        read_preset_file(path)
    assert "\n" not in str(info.value)


def test_smollm2_presets_reproduce_the_measured_rho_with_ideal_latencies():
    """Issue 4: the presets built from the H100 traces give back the measured SPD rho (ideal stage latencies)."""
    import csv
    from dataclasses import replace
    from pathlib import Path

    from sim_scenarios import ideal

    from spdsim.engine.metrics import summarize
    from spdsim.engine.run import simulate
    from spdsim.scenario.config import AcceptanceSpec

    results = Path(__file__).resolve().parent / "data" / "heads"
    for folder, dataset in (("spd_n4_l2", "humaneval"), ("spd_n2_l1", "gsm8k")):
        rows = list(csv.DictReader((results / folder / "eval" / "acceptance.csv").open()))
        measured = next(r for r in rows if r["dataset"] == dataset and float(r["temperature"]) == 0.0)
        preset = get_preset(f"smollm2-135m/{dataset}/{measured['label']}")
        method = preset.method
        scenario = ideal("spd", width=method["num_stages"], new_tokens=20_000, requests=1)
        scenario = replace(scenario, acceptance=AcceptanceSpec(**preset.acceptance))
        rho = summarize(simulate(scenario))["rho"]
        assert rho == pytest.approx(float(measured["rho"]), rel=0.02)


CATALOGUE = ("a100-80gb", "h100", "h200", "b200", "l40s", "mi300x")


@pytest.mark.parametrize("name", CATALOGUE)
def test_the_hardware_catalogue_carries_datasheet_figures_and_their_source(name):
    sheet = hardware_datasheet(name)
    assert sheet["url"].startswith("https://www.") and sheet["gpu"]
    for key in ("memory_gib", "memory_bandwidth_gbps", "bf16_dense_tflops", "intra_node_bandwidth_gbps"):
        assert sheet[key] > 0, key
    assert sheet["inter_node_bandwidth_gbps"] > 0 and sheet["intra_node_link"] and sheet["inter_node_link"]
    assert sheet["fp8_dense_tflops"] is None if name == "a100-80gb" else sheet["fp8_dense_tflops"] > 0
    hw = get_hardware(name)
    assert hw.memory_gib == sheet["memory_gib"] and hw.peak_tflops == sheet["bf16_dense_tflops"]
    assert hw.p2p_bandwidth_gbps == sheet["intra_node_bandwidth_gbps"]
    if name == "h100":  # the project's measured copy bandwidth, 90% of the datasheet's 3.35 TB/s
        assert (hw.mem_bandwidth_gbps, sheet["memory_bandwidth_gbps"]) == (3020.0, 3350.0)
    else:
        assert hw.mem_bandwidth_gbps == sheet["memory_bandwidth_gbps"]
        assert sheet["url"] in hw.source or name == "h200"


def test_variants_name_the_gpu_they_use():
    assert hardware_datasheet("h100-2node-200g") == hardware_datasheet("h100")
    assert hardware_datasheet("h200-nvl8")["gpu"] == "NVIDIA H200 SXM 141GB"
    headers, rows = catalog("hardware")
    row = dict(zip(headers, next(r for r in rows if r[0] == "h100-nvl8"), strict=True))
    assert row["source"].startswith("as h100: One H100 NVLink node")
    row = dict(zip(headers, next(r for r in rows if r[0] == "h100"), strict=True))
    assert row["bandwidth GB/s"] == "3350 (simulated 3020)" and row["source"].startswith(
        "https://www.nvidia.com"
    )


def test_list_shows_the_catalogue_with_sources():
    from typer.testing import CliRunner

    from spdsim.cli import app

    result = CliRunner().invoke(app, ["list", "hardware"])
    assert result.exit_code == 0, result.output
    for text in (*CATALOGUE, "BF16 / FP8", "source", "https://www.amd.com", "AMD Instinct MI300X"):
        assert text in result.output, text
    result = CliRunner().invoke(app, ["list", "models"])
    for text in ("qwen3-30b-a3b", "qwen3_moe, 8/128 experts", "24/32 DeltaNet", "https://huggingface.co/"):
        assert text in result.output, text


def test_a_measured_copy_bandwidth_replaces_the_datasheet_one():
    from spdsim.report.compare import simulate_runs
    from spdsim.scenario.config import to_dict

    small = ["workload.new_tokens=16", "workload.num_requests=1", "hardware=a100-80gb"]
    datasheet, measured = (
        simulate_runs(load_runs(methods=["ar"], overrides=[*small, *extra]))[0]
        for extra in ([], ["hardware.copy_bandwidth_gbps=1835.1"])
    )
    assert "copy_bandwidth_gbps" not in to_dict(datasheet.scenario)["hardware"]
    assert to_dict(measured.scenario)["hardware"]["copy_bandwidth_gbps"] == 1835.1
    # a memory-bound AR step streams at 90% of the datasheet bandwidth: 1/0.9 as long
    ratio = measured.result.tokens[-1].commit_ns / datasheet.result.tokens[-1].commit_ns
    assert ratio == pytest.approx(2039 / 1835.1, rel=0.01)
