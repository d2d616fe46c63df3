"""Profile schema v1: the tensor-parallel phases, the optional all-reduce ring fit and the stream overlap are
checked at load."""

import json

import pytest

from spdsim.contract.profile_schema import PHASE_COORDINATES, ProfileError, embedded_profiles, load_profile


def _bundle(**extra):
    stats = {"median_us": 12.0, "p10_us": 11.0, "p90_us": 13.0, "samples": 5}
    return {
        "schema_version": 1,
        "kind": "spdsim.profile",
        "hardware": {"name": "test-gpu"},
        "model": {"name": "toy"},
        "dtype": "bfloat16",
        "software": {},
        "date": "2026-11-22",
        "phases": {
            "layers_tp": [{"tp_degree": 2, "layers": 4, "query_tokens": 1, "kv_len": 256, **stats}],
            "allreduce": [{"tp_degree": 2, "bytes": 8192, **stats}],
        },
        **extra,
    }


def _load(tmp_path, data):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    return load_profile(path)


def test_tp_phase_coordinates():
    assert PHASE_COORDINATES["allreduce"] == ("tp_degree", "bytes")
    assert set(PHASE_COORDINATES["layers_tp"]) == {"layers", "query_tokens", "kv_len", "tp_degree"}


def test_tp_bundle_round_trips(tmp_path):
    fit = {"coefficients": {"ring_steps": 8.0, "ring_bytes": 1e-6}, "degrees": [2], "rule": "ring"}
    assert _load(tmp_path, _bundle(allreduce_fit=fit))["allreduce_fit"] == fit


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["phases"]["allreduce"][0].pop("tp_degree"), r"phases.allreduce\[0\].tp_degree: missing"),
        (lambda d: d["phases"]["layers_tp"][0].update(kv_len=-1), r"layers_tp\[0\].kv_len: negative"),
        (lambda d: d.update(allreduce_fit={"coefficients": {"ring_steps": 1.0}}), r"ring_bytes: missing"),
        (
            lambda d: d.update(allreduce_fit={"coefficients": {"ring_steps": -1.0, "ring_bytes": 0}}),
            r"ring_steps",
        ),
        (lambda d: d.update(allreduce_fit=[1, 2]), r"allreduce_fit.coefficients.ring_steps"),
    ],
)
def test_bad_tp_fields_are_one_line_errors(tmp_path, change, message):
    data = _bundle()
    change(data)
    with pytest.raises(ProfileError, match=message) as info:
        _load(tmp_path, data)
    assert "\n" not in str(info.value)


def test_embedded_measured_profiles_load_by_name_and_carry_their_measurement():
    names = embedded_profiles()
    assert "qwen3-4b_h100" in names
    for name in names:
        bundle = load_profile(name)
        model, gpu = name.rsplit("_", 1)
        assert bundle["model"]["name"].removeprefix("random:") == model
        assert gpu in bundle["hardware"]["gpu"].lower() and bundle["source"] and bundle["date"]
        assert bundle["software"]["torch"] and bundle["hardware"]["copy_bandwidth_gbps"] > 0


def test_an_unknown_profile_name_lists_the_embedded_ones():
    with pytest.raises(ProfileError, match="no such file 'qwen9' and no embedded profile.*qwen3-4b_h100"):
        load_profile("qwen9")


def test_the_stream_overlap_phase_loads_and_needs_its_stream_count(tmp_path):
    entry = {"streams": 3, "median_us": 400.0, "p10_us": 380.0, "p90_us": 420.0, "samples": 50, "layers": 12}
    data = _bundle()
    data["phases"]["stream_overlap"] = [entry]
    assert _load(tmp_path, data)["phases"]["stream_overlap"] == [entry]
    assert PHASE_COORDINATES["stream_overlap"] == ("streams",)
    data["phases"]["stream_overlap"] = [{k: v for k, v in entry.items() if k != "streams"}]
    with pytest.raises(ProfileError, match=r"stream_overlap\[0\].streams: missing"):
        _load(tmp_path, data)
