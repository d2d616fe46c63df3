"""Scenario files, overrides, name/preset resolution and validation at the boundary."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spdsim.errors import SpdsimError
from spdsim.scenario.files import (
    apply_overrides,
    build_scenario,
    expand_runs,
    load_runs,
    parse_value,
    read_scenario_file,
    scenario_to_run_dict,
)
from spdsim.scenario.presets import get_preset

BASE = {"model": "qwen3.5-4b", "hardware": "h100", "method": {"name": "spd", "num_stages": 8}}


def test_default_is_the_flagship_setting_against_the_baselines():
    runs = load_runs()
    labels = [run.label for run in runs]
    assert labels[:4] == ["ar", "ar-tp8", "spd-n8-l3", "spd-n8-l3-colocated"]
    assert runs[3].scenario.method.drafter_placement == "stage0"
    spd = runs[2].scenario
    assert (spd.method.name, spd.method.num_stages, spd.method.spec_layers) == ("spd", 8, 3)
    assert spd.model.name == "qwen3.5-4b" and spd.hardware.name == "h100"
    assert spd.latency.kind == "roofline"
    assert spd.acceptance.preset == "qwen3.5-4b/overall/spd-n8-l3"
    assert spd.acceptance.alpha == get_preset("qwen3.5-4b/overall/spd-n8-l3").acceptance["alpha"]
    methods = {run.scenario.method.name for run in runs}
    assert methods == {
        "ar",
        "spd",
        "eagle3",
        "draft-model",
        "specdecpp",
        "cascade",
        "mtp",
        "dflash",
        "peagle",
        "ppsd",
    }
    eagle = {run.label: run.scenario for run in runs if run.scenario.method.name == "eagle3"}
    assert eagle["eagle3-k3"].method.draft_tokens == 3 and eagle["eagle3-k7"].method.draft_tokens == 7
    assert eagle["eagle3-k7-tp8"].method.tensor_parallel == 8


@pytest.mark.parametrize(
    ("text", "value"),
    [("16", 16), ("0.5", 0.5), ("true", True), ("spd", "spd"), ("8,8,8,8", [8, 8, 8, 8]), ("[4, 4]", [4, 4])],
)
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_overrides_apply_to_every_run_after_merging():
    runs = load_runs(overrides=["method.num_stages=16", "method.spec_layers=1", "workload.new_tokens=64"])
    spd = next(r.scenario for r in runs if r.label == "spd-n16-l1")  # the label follows the knobs
    assert spd.method.num_stages == 16 and spd.method.spec_layers == 1
    assert "spd-n8-l3" not in [r.label for r in runs]
    assert all(r.scenario.workload.new_tokens == 64 for r in runs)


def test_override_into_a_named_model_expands_it():
    raw = apply_overrides(BASE, ["model.num_layers=30", "method.stage_layers=4,4,4,4,4,4,3,3"])
    scenario = build_scenario(raw)
    assert scenario.model.num_layers == 30 and scenario.model.hidden_size == 2560
    assert scenario.method.stage_layers == (4, 4, 4, 4, 4, 4, 3, 3)


def test_explicit_acceptance_keys_win_over_the_preset():
    raw = {**BASE, "acceptance": {"preset": "qwen3.5-4b/overall/spd-n8-l3", "alpha": 0.9}}
    acceptance = build_scenario(raw).acceptance
    assert acceptance.alpha == 0.9 and acceptance.kind == "iid" and acceptance.preset.endswith("spd-n8-l3")


def test_a_run_acceptance_table_replaces_the_base_one():
    raw = {**BASE, "acceptance": {"preset": "qwen3.5-4b/overall/spd-n8-l3"}}
    raw["runs"] = [{"label": "mine", "method": {"name": "eagle3"}, "acceptance": {"alpha": 0.5}}]
    ((label, run),) = expand_runs(raw)
    scenario = build_scenario(run)
    assert label == "mine" and scenario.acceptance.preset == "" and scenario.acceptance.alpha == 0.5
    assert scenario.method.num_stages == 8  # method tables merge


def test_acceptance_option_targets_runs_of_its_method_with_their_knobs():
    runs = load_runs(acceptance="qwen3.5-4b/humaneval/spd-n16-l2")
    spd = next(r.scenario for r in runs if r.scenario.method.name == "spd")
    assert spd.acceptance.preset == "qwen3.5-4b/humaneval/spd-n16-l2"
    assert (spd.method.num_stages, spd.method.spec_layers) == (16, 2)
    eagle = next(r.scenario for r in runs if r.label == "eagle3-k3")
    assert eagle.acceptance.preset == "qwen3.5-4b/overall/eagle3-k3"
    with pytest.raises(SpdsimError, match="no run uses"):
        load_runs(methods=["eagle3"], acceptance="qwen3.5-4b/humaneval/spd-n8-l3")


def test_method_selection_keeps_matching_runs_or_derives_one(tmp_path):
    runs = load_runs(methods=["spd", "eagle3"])
    assert [r.label for r in runs] == [
        "spd-n8-l3",
        "spd-n8-l3-colocated",
        "eagle3-k3",
        "eagle3-k7",
        "eagle3-k7-tp8",
    ]
    path = tmp_path / "one.toml"
    path.write_text('model = "llama-3.1-8b"\nhardware = "h200"\n[method]\nname = "spd"\nnum_stages = 4\n')
    runs = load_runs([path], methods=["spd", "mtp"])
    assert [(r.label, r.scenario.method.name) for r in runs] == [("spd-n4-l3", "spd"), ("mtp-k3", "mtp")]


def test_json_scenarios_and_resolved_runs_round_trip(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({**BASE, "seed": 3, "acceptance": {"alpha": 0.7}}))
    (run,) = load_runs([path])
    resolved = tmp_path / "config.json"
    resolved.write_text(json.dumps({"runs": [scenario_to_run_dict(run.label, run.scenario)]}))
    (again,) = load_runs([resolved])
    assert again == run


def test_several_files_prefix_labels(tmp_path):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text('model = "qwen3.5-4b"\nhardware = "h100"\nlabel = "x"\n')
    b.write_text('model = "qwen3.5-4b"\nhardware = "h200"\nlabel = "x"\n')
    assert [r.label for r in load_runs([a, b])] == ["a:x", "b:x"]


BAD_OVERRIDES = [
    (["method.name=medusa"], "method.name: unknown method 'medusa' (allowed: ar, spd"),
    (["hardware=a100"], "hardware: unknown hardware 'a100' (allowed: a100-80gb, b200, h100-2node-100g, "),
    (["model=gpt-9"], "model: unknown model 'gpt-9' (allowed:"),
    (["acceptance.preset=qwen3.5-4b/overall/nope"], "acceptance.preset: unknown preset"),
    (["acceptance.alpha=1.5"], "acceptance.alpha: must be in [0, 1] (got 1.5)"),
    (["acceptance.alpha=-0.1"], "acceptance.alpha: must be in [0, 1]"),
    (["acceptance.alpha=nan"], "acceptance.alpha: must be in [0, 1] (got nan)"),
    (["acceptance.kind=psychic"], "acceptance.kind: unknown kind 'psychic' (allowed: iid"),
    (["acceptance.kind=positional", "acceptance.rates=0.5,0.7"], "acceptance.rates: unconditional"),
    (["method.num_stages=0"], "method.num_stages: must be >= 1 (got 0)"),
    (
        ["method.num_stages=5"],
        "method.num_stages: 5 does not divide model.num_layers = 32; give method.stage_layers",
    ),
    (["method.num_stages=4", "method.stage_layers=8,8,8,7"], "method.stage_layers: sums to 31; must sum to"),
    (["method.num_stages=4", "method.stage_layers=16,16"], "method.stage_layers: has 2 entries"),
    (
        ["model=qwen3-8b"],
        "36; give method.stage_layers (8 layer counts summing to 36, e.g. --set method.stage_layers=[5,5,5,5,4,4,4,4])",
    ),
    (["method.num_stages=abc"], "method.num_stages: expected an integer, got 'abc'"),
    (
        ["method.drafter_placement=cpu"],
        "method.drafter_placement: unknown placement 'cpu' (allowed: own-gpu, stage0)",
    ),
    (
        ["method.verify_placement=gpu"],
        "method.verify_placement: unknown placement 'gpu' (allowed: controller, last-stage)",
    ),
    (["latency.kind=constant", "latency.layer_ns=-5"], "latency.layer_ns: must be >= 0 ns (got -5)"),
    (["latency.kind=magic"], "latency.kind: unknown kind 'magic' (allowed: constant"),
    (["overheads.p2p_ns=-1"], "overheads.p2p_ns: must be a finite number >= 0 (got -1)"),
    (["overheads.jitter_cv=nan"], "overheads.jitter_cv: must be a finite number >= 0 (got nan)"),
    (["hardware.mem_bandwidth_gbps=nan"], "hardware.mem_bandwidth_gbps: must be a finite number >= 0"),
    (["method.colour=red"], "method.colour: unknown field (allowed: name, num_stages"),
    (["latency.kind=measured", "latency.profile_path=/nonexistent/p.json"], "profile: no such file"),
    (
        ["acceptance.kind=trace", "acceptance.trace_path=/nonexistent/t.csv"],
        "no such file '/nonexistent/t.csv'",
    ),
    (["workload.new_tokens=0"], "workload.new_tokens: must be >= 1"),
    (["nonsense"], "--set: expected KEY=VALUE"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_OVERRIDES)
def test_bad_input_is_one_line_naming_the_field(overrides, message):
    with pytest.raises(SpdsimError) as info:
        load_runs(methods=["spd"], overrides=overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.toml", "model = [unclosed", "is not valid TOML"),
        ("bad.json", "{oops", "is not valid JSON"),
        ("bad.yaml", "a: 1", "must end in .toml or .json"),
        ("list.json", "[1, 2]", "must hold a table"),
        ("field.toml", "colour = 'red'", "scenario: unknown field 'colour'"),
        ("runs.toml", "runs = 3", "scenario.runs: must be a list of tables"),
    ],
)
def test_malformed_scenario_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(SpdsimError, match=message):
        load_runs([path])


def test_missing_scenario_file(tmp_path):
    with pytest.raises(SpdsimError, match="scenario: no such file"):
        read_scenario_file(tmp_path / "absent.toml")


def test_malformed_trace_and_profile_files(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("prompt_id,accepted\np,1\n")
    with pytest.raises(SpdsimError, match="missing column"):
        load_runs(methods=["spd"], overrides=["acceptance.kind=trace", f"acceptance.trace_path={trace}"])
    profile = tmp_path / "profile.json"
    profile.write_text('{"schema_version": 1}')
    with pytest.raises(SpdsimError, match="profile: missing field"):
        load_runs(methods=["spd"], profile=str(profile))


@settings(max_examples=40, deadline=None)
@given(
    layers=st.integers(2, 64),
    data=st.data(),
    alpha=st.floats(0.0, 1.0),
)
def test_any_split_summing_to_l_is_accepted(layers, data, alpha):
    n = data.draw(st.integers(1, layers))
    cuts = sorted(
        data.draw(st.lists(st.integers(1, layers - 1), min_size=n - 1, max_size=n - 1, unique=True))
    )
    split = [b - a for a, b in zip([0, *cuts], [*cuts, layers], strict=True)]
    raw = apply_overrides(
        BASE,
        [f"model.num_layers={layers}", f"method.num_stages={n}", f"method.stage_layers={json.dumps(split)}"],
    )
    raw["acceptance"] = {"alpha": alpha}
    scenario = build_scenario(raw)
    assert sum(scenario.method.stage_layers) == layers and len(scenario.method.stage_layers) == n


def test_acceptance_model_dataset_moves_every_matching_preset():
    runs = {r.label: r.scenario for r in load_runs(acceptance="qwen3.5-4b/humaneval")}
    assert runs["spd-n8-l3"].acceptance.preset == "qwen3.5-4b/humaneval/spd-n8-l3"
    assert runs["eagle3-k7"].acceptance.preset == "qwen3.5-4b/humaneval/eagle3-k7"
    assert runs["ppsd-n8"].acceptance.preset == "qwen3.5-4b/humaneval/ppsd-n8"
    assert runs["mtp-k3"].acceptance.preset == "qwen3.5-9b/gsm8k/mtp-k3"  # no Qwen3.5-4B figure: unchanged
    with pytest.raises(SpdsimError, match="datasets of qwen3.5-4b: gsm8k, humaneval, mt_bench, overall"):
        load_runs(acceptance="qwen3.5-4b/alpaca")


def test_drafter_layer_counts_are_fractions_of_the_target():
    from spdsim.scenario.config import MethodSpec

    # classic draft model: the fraction of the target's layers (at least one), else draft_layers
    assert MethodSpec(draft_model_layers_fraction=0.25, draft_layers=5).draft_model_layers(32) == 8
    assert MethodSpec(draft_model_layers_fraction=0.3).draft_model_layers(36) == 11  # round(10.8)
    assert MethodSpec(draft_model_layers_fraction=0.01).draft_model_layers(32) == 1
    assert MethodSpec(draft_layers=5).draft_model_layers(32) == 5
    assert MethodSpec(draft_model_layers_fraction=0.25, draft_layers=5).draft_model_layers(None) == 5
    # the cascade's middle model: the fraction, else a quarter of the target (of 4 layers without a shape)
    assert MethodSpec(draft_model_layers_fraction=0.3, draft_layers=5).cascade_draft_layers(36) == 11
    assert MethodSpec(draft_layers=5).cascade_draft_layers(36) == 9
    assert MethodSpec(draft_model_layers_fraction=0.01).cascade_draft_layers(32) == 1
    assert MethodSpec().cascade_draft_layers(None) == 1
    assert MethodSpec(draft_model_layers_fraction=0.5).cascade_draft_layers(None) == 2


def test_a_measured_profile_brings_its_gpu_so_rooflines_beside_it_use_the_same_one():
    """The H200 bundle's runs (and the tensor-parallel rooflines next to them) are on the h200, not the default
    scenario's GPU; a bundle whose GPU has no embedded hardware keeps the scenario's."""
    from spdsim.scenario.presets import hardware_of_profile

    measured = load_runs(methods=["ar"], profile="qwen3-4b_h200", overrides=["workload.prompt_tokens=128"])
    assert {run.scenario.hardware.name for run in measured} == {"h200"}
    shipped_h100 = load_runs(methods=["ar"], profile="qwen3-4b_h100")
    assert {run.scenario.hardware.name for run in shipped_h100} == {"h100"}
    assert hardware_of_profile("nvidia-h200") == "h200"
    assert hardware_of_profile("NVIDIA-H100") == "h100"
    assert hardware_of_profile("cpu") is None


def test_a_latency_kind_the_profile_cannot_give_a_tensor_parallel_run_is_one_line():
    """--profile prices one-GPU runs and leaves tensor-parallel ones on the roofline; asking all runs for a fitted
    latency names the run that cannot have it (it used to say the run had no profile, which the user had given)."""
    with pytest.raises(
        SpdsimError, match=r"latency.kind: fitted for run 'ar-tp8 \[roofline\]'.*tensor-parallel"
    ):
        load_runs(methods=["ar"], profile="qwen3-4b_h200", overrides=["latency.kind=fitted"])


def test_an_acceptance_preset_follows_the_measured_model_where_that_model_has_it():
    """--profile of a Qwen3.5-9B bundle: the default's Qwen3.5-4B presets become the 9B ones of the same dataset and
    knobs; a preset the 9B model lacks (EAGLE-3 K = 7) stays, as does one of an unrelated model."""
    runs = load_runs(methods=["spd", "mtp"], profile="qwen3.5-9b_h100", overrides=["workload.new_tokens=256"])
    presets = {named.scenario.method.name: named.scenario.acceptance.preset for named in runs}
    assert presets == {"spd": "qwen3.5-9b/overall/spd-n8-l3", "mtp": "qwen3.5-9b/gsm8k/mtp-k3"}
    kept = load_runs(methods=["ar"], profile="qwen3-4b_h100", overrides=["workload.new_tokens=256"])
    assert kept[0].scenario.acceptance.preset == "qwen3.5-4b/overall/spd-n8-l3"  # no qwen3-4b presets
