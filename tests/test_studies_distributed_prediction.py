"""studies/distributed_prediction/predict.py: simulator predictions from a phase bundle, or the committed numbers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parent.parent / "studies" / "distributed_prediction" / "predict.py"


def load():
    spec = importlib.util.spec_from_file_location("study_distributed_prediction", STUDY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_a_bundle_with_host_issue_prices_the_host_and_a_missing_one_falls_back(tmp_path):
    module = load()
    bundle = module.committed_bundle("qwen3-8b")
    bundle["phases"]["host_issue"] = [{"graphs": 1, "median_us": 100.0}, {"graphs": 2, "median_us": 300.0}]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(bundle))
    rows = module.predict({"qwen3-8b": path, "qwen3-4b": tmp_path / "absent.json"})
    assert len(rows) == 2 * 3 * 2 * 3
    key = {(r["model"], r["n"], r["placement"], r["alpha"]): r for r in rows}
    with_bundle = key[("qwen3-8b", 2, "colocated", 0.8)]
    assert with_bundle["host_us_per_cycle"] == module.ASSUMPTIONS["d2h_read_us"] + 300.0
    assert "absent.json" in key[("qwen3-4b", 2, "colocated", 0.8)]["source"]
    fallback = {
        (r["n"], r["placement"], r["alpha"]): r for r in module.predict({}) if r["model"] == "qwen3-8b"
    }
    # the bundle's 300 us of launches (instead of 2 graphs at the assumed per-graph cost) lengthen the cycle by the
    # difference: the host sits on the critical path once per cycle
    assumed_us = 2 * module.ASSUMPTIONS["host_issue_us_per_graph"]
    delta = with_bundle["saturated_cycle_ms"] - fallback[(2, "colocated", 0.8)]["saturated_cycle_ms"]
    assert abs(delta - (300.0 - assumed_us) / 1e3) < 1e-6
    for (model, n, placement, _), row in key.items():
        rows_alpha = [key[(model, n, placement, a)] for a in module.ALPHAS]
        assert [r["speedup_vs_compiled_ar"] for r in rows_alpha] == sorted(
            r["speedup_vs_compiled_ar"] for r in rows_alpha
        )
        assert row["gpus"] == (n if placement == "colocated" else n + 1)


def test_a_bundle_without_a_drafter_phase_gets_the_assumed_one_from_its_own_layers(tmp_path):
    """The H100 qwen3-8b bundle measured no drafter: the prediction prices one from the bundle's own one-token
    layer and head medians (not the committed H200 numbers), says so in each row's source, and names the GPU."""
    module = load()
    bundle = module.committed_bundle("qwen3-8b")
    bundle["hardware"] = {"name": "nvidia-h100", "gpu": "NVIDIA H100 80GB HBM3"}
    measured = bundle["phases"].pop("drafter")
    completed, note = module.with_drafter(bundle)
    assert "drafter" not in bundle["phases"]  # the input is left as it was
    assert (
        [e["median_us"] for e in completed["phases"]["drafter"]]
        == pytest.approx([e["median_us"] for e in measured], rel=1e-3)
    )  # the committed numbers' assumption (one mean layer, the head, the projection) from this bundle's medians
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(bundle))
    rows = [r for r in module.predict({"qwen3-8b": path}) if r["model"] == "qwen3-8b"]
    assert rows and all(
        "drafter assumed" in r["source"] and r["gpu"] == "NVIDIA H100 80GB HBM3" for r in rows
    )
    assert module.markdown(rows, "NVIDIA H100 80GB HBM3").startswith(
        "# Predicted distributed SPD on NVIDIA H100"
    )
    unchanged, none = module.with_drafter(module.committed_bundle("qwen3-8b"))
    assert none == "" and unchanged["phases"]["drafter"] == measured
