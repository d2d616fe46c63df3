"""Model shapes from HF config.json files (spdsim/contract/model_config.py): the shipped configs give the shapes the
simulator had before, `--model <config.json>` works for Llama, Qwen3, the Qwen3.5 hybrid and a MoE, and what the
simulator does not model is refused in one line."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spdsim.cli import app, main
from spdsim.contract.model_config import (
    embedded_model_names,
    model_shape,
    read_model_config,
    shape_from_config,
    transformers_fields,
)
from spdsim.errors import SpdsimError
from spdsim.scenario.files import load_runs
from spdsim.scenario.memory import full_layer_params, linear_layer_params
from spdsim.scenario.presets import get_model, model_source

SMALL = ["--set", "workload.new_tokens=32", "--set", "workload.num_requests=1"]

# The hand-typed shapes of spdsim/profiles/models before they became config files (commit 8cabc6f): the
# simulator's results for them stay byte-identical.
BEFORE = {
    "llama-3.1-8b": (32, 4096, 32, 8, 128, 14336, 128256, False, 0),
    "qwen3-4b": (36, 2560, 32, 8, 128, 9728, 151936, True, 0),
    "qwen3-8b": (36, 4096, 32, 8, 128, 12288, 151936, False, 0),
    "qwen3.5-4b": (32, 2560, 16, 4, 256, 9216, 248320, True, 24),
    "qwen3.5-9b": (32, 4096, 16, 4, 256, 12288, 248320, False, 24),
    "smollm2-135m": (30, 576, 9, 3, 64, 1536, 49152, True, 0),
}


def hf_config(name: str) -> dict:
    """A shipped config without spdsim's keys, as the hub serves it."""
    return {k: v for k, v in read_model_config(name)[1].items() if not k.startswith("_")}


def write_config(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def simulate(*args: str):
    result = CliRunner().invoke(app, ["compare", "--method", "ar", "--method", "spd", *SMALL, *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_the_shipped_configs_give_the_shapes_of_before(name):
    shape = get_model(name)
    fields = (
        shape.num_layers,
        shape.hidden_size,
        shape.num_attention_heads,
        shape.num_kv_heads,
        shape.head_dim,
        shape.intermediate_size,
        shape.vocab_size,
        shape.tied_embeddings,
        shape.linear_attention_layers,
    )
    assert fields == BEFORE[name] and shape.dtype_bytes == 2 and shape.num_experts == 0
    assert shape.attention_output_gate == name.startswith("qwen3.5")
    if name.startswith("qwen3.5"):
        assert (shape.linear_key_heads, shape.linear_value_heads, shape.linear_head_dim) == (16, 32, 128)


@pytest.mark.parametrize("name", embedded_model_names())
def test_every_shipped_config_names_its_published_source(name):
    config = read_model_config(name)[1]
    assert "https://huggingface.co/" in config["_source"] and config["_source"].endswith("/config.json")
    assert model_source(name).startswith(config["_source"])
    assert get_model(name).name == name


def test_the_executor_presets_are_the_shipped_files():
    import importlib

    import executor.model_presets

    # fresh: transformers' AutoConfig standardises the nested rope dicts of the presets other tests built
    presets = importlib.reload(executor.model_presets)
    PRESETS, UNSUPPORTED = presets.PRESETS, presets.UNSUPPORTED

    for name in embedded_model_names():
        assert PRESETS[name] == transformers_fields(read_model_config(name)[1])
        assert "_source" not in PRESETS[name] and "torch_dtype" not in PRESETS[name]
    assert PRESETS["llama3.1-8b"] == PRESETS["llama-3.1-8b"]
    assert set(UNSUPPORTED) == {"mistral-7b-v0.3", "qwen3-30b-a3b"}  # simulator shapes only
    assert "qwen3_moe" in UNSUPPORTED["qwen3-30b-a3b"] and "\n" not in UNSUPPORTED["qwen3-30b-a3b"]


@pytest.mark.parametrize(
    "name", ["llama-3.1-8b", "qwen3-8b", "qwen3.5-4b", "mistral-7b-v0.3", "qwen3-30b-a3b", "smollm2-135m"]
)
def test_weights_counted_like_transformers(name):
    """The shape's weights (memory check) against transformers' own model of the same config, on the meta device;
    norms are left out of the shape (a few per mille)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    fields = transformers_fields(read_model_config(name)[1])
    fields.pop("architectures")
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(config)
    expected = sum(p.numel() for p in hf.parameters())
    s = get_model(name)
    share = (s.num_layers - s.linear_attention_layers) / s.num_layers
    layers = s.num_layers * (share * full_layer_params(s) + (1 - share) * linear_layer_params(s))
    counted = layers + s.vocab_size * s.hidden_size * (1 if s.tied_embeddings else 2)
    assert counted == pytest.approx(expected, rel=3e-3)


def test_simulate_a_llama_config_directory(tmp_path):
    folder = write_config(tmp_path / "Llama-3.1-8B", hf_config("llama-3.1-8b"))
    out = simulate("--model", str(folder))
    assert "Llama-3.1-8B on h100" in out
    run = load_runs(overrides=[f"model={json.dumps(str(folder))}"], methods=["ar"])[0]
    assert replace(run.scenario.model, name="llama-3.1-8b") == get_model("llama-3.1-8b")


def test_simulate_a_qwen3_config_file_gives_the_embedded_results(tmp_path):
    path = write_config(tmp_path / "Qwen3-8B", hf_config("qwen3-8b")) / "config.json"
    mine = load_runs(overrides=[f"model={json.dumps(str(path))}", "method.num_stages=4"])
    embedded = load_runs(overrides=["model=qwen3-8b", "method.num_stages=4"])
    assert [replace(r.scenario, model=replace(r.scenario.model, name="qwen3-8b")) for r in mine] == [
        r.scenario for r in embedded
    ]
    assert "Qwen3-8B on h100" in simulate("--model", str(path), "--set", "method.num_stages=4")


def test_a_published_qwen35_multimodal_config_reads_its_text_config(tmp_path):
    text = hf_config("qwen3.5-4b")
    tied = text.pop("tie_word_embeddings")
    published = {
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "model_type": "qwen3_5",
        "tie_word_embeddings": tied,
        "torch_dtype": text.pop("torch_dtype"),
        "text_config": text,
        "vision_config": {"depth": 24, "hidden_size": 1024},
    }
    folder = write_config(tmp_path / "Qwen3.5-4B", published)
    assert asdict(model_shape(folder)) == {**asdict(get_model("qwen3.5-4b")), "name": "Qwen3.5-4B"}
    # layer_types (what transformers writes) instead of full_attention_interval
    text = {k: v for k, v in hf_config("qwen3.5-9b").items() if k != "full_attention_interval"}
    text["layer_types"] = (["linear_attention"] * 3 + ["full_attention"]) * 8
    assert replace(shape_from_config(text, "x"), name="qwen3.5-9b") == get_model("qwen3.5-9b")
    out = simulate("--model", str(folder), "--hardware", "h200")
    assert "Qwen3.5-4B on h200" in out


def test_a_mixture_of_experts_is_priced_by_its_active_experts(tmp_path):
    shape = get_model("qwen3-30b-a3b")
    assert (shape.num_experts, shape.experts_per_token, shape.expert_intermediate_size) == (128, 8, 768)
    assert shape.intermediate_size == 8 * 768  # what one token reads
    out = simulate("--model", "qwen3-30b-a3b", "--set", "method.num_stages=4")
    assert "qwen3-30b-a3b on h100" in out
    mixtral = {
        "model_type": "mixtral",
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "vocab_size": 32000,
        "sliding_window": None,
    }
    shape = shape_from_config(mixtral, "mixtral")
    assert (shape.intermediate_size, shape.num_experts, shape.expert_intermediate_size) == (
        2 * 14336,
        8,
        14336,
    )
    assert shape.head_dim == 128 and shape.dtype_bytes == 2


REFUSED = [
    (
        {"model_type": "gpt_oss"},
        "model_type 'gpt_oss', which the simulator does not model (supported: llama,",
    ),
    (
        {"sliding_window": 4096, "model_type": "mistral"},
        "uses sliding-window attention (sliding_window 4096)",
    ),
    ({"quantization_config": {"quant_method": "awq"}}, "has 'awq' quantised weights"),
    ({"layer_types": ["sliding_attention"] * 32}, "has 'sliding_attention' layers"),
    ({"hidden_size": None}, "needs a positive integer 'hidden_size'"),
    (
        {
            "model_type": "qwen3_moe",
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 64,
            "mlp_only_layers": [0],
        },
        "mixes dense and MoE layers",
    ),
    ({"head_dim": "x"}, "needs a positive integer 'head_dim' (got 'x')"),
    ({"head_dim": 128.5}, "needs a positive integer 'head_dim' (got 128.5)"),
    ({"num_key_value_heads": "8"}, "needs a positive integer 'num_key_value_heads'"),
    (
        {
            "model_type": "qwen3_moe",
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 64,
            "shared_expert_intermediate_size": "x",
        },
        "needs a non-negative integer 'shared_expert_intermediate_size'",
    ),
]


@pytest.mark.parametrize(("change", "message"), REFUSED)
def test_what_is_not_modelled_is_refused_in_one_line(tmp_path, capsys, change, message):
    folder = write_config(tmp_path / "m", {**hf_config("mistral-7b-v0.3"), **change})
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--model", str(folder), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: model: 'm' ") and message in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_paths_and_names(tmp_path):
    with pytest.raises(SpdsimError, match=r"unknown model 'gpt-5' \(allowed: llama-3.1-8b, .*or a path"):
        model_shape("gpt-5")
    with pytest.raises(SpdsimError, match="holds no config.json"):
        model_shape(tmp_path)
    with pytest.raises(SpdsimError, match="no such file or directory"):
        model_shape(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SpdsimError, match="is not a JSON config"):
        model_shape(tmp_path / "bad.json")
    (tmp_path / "my-model.json").write_text(json.dumps(hf_config("qwen3-4b")))
    assert model_shape(tmp_path / "my-model.json").name == "my-model"
    assert model_shape("Qwen3-4B") == get_model("qwen3-4b")  # embedded names ignore case
