"""Model sources: real preset configs, clear errors, the pinned SmolLM2 GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from executor.fastmodel import ModelConfig
from executor.model_presets import PRESETS
from executor.models import (
    SMOLLM2_ENV,
    ByteTokenizer,
    fetch_smollm2_gguf,
    load_fast_model,
    load_model,
    smollm2_cached,
)
from spdsim.errors import SpdsimError


def _config(preset: str) -> ModelConfig:
    from transformers import AutoConfig

    fields = {k: v for k, v in PRESETS[preset].items() if k not in ("model_type", "architectures")}
    return ModelConfig.from_hf(AutoConfig.for_model(PRESETS[preset]["model_type"], **fields))


@pytest.mark.parametrize(
    ("preset", "billions", "layers"),
    [("qwen3-0.6b", 0.596, 28), ("qwen3-4b", 4.022, 36), ("qwen3-8b", 8.191, 36), ("llama3.1-8b", 8.030, 32)],
)
def test_presets_have_the_published_sizes(preset: str, billions: float, layers: int) -> None:
    cfg = _config(preset)
    assert cfg.num_layers == layers
    assert cfg.num_parameters() / 1e9 == pytest.approx(billions, abs=0.002)


def test_llama31_preset_uses_llama3_rope() -> None:
    assert _config("llama3.1-8b").rope_llama3 == (8.0, 1.0, 4.0, 8192)
    assert _config("qwen3-4b").qk_norm and not _config("llama3.1-8b").qk_norm


def test_random_models_are_seeded() -> None:
    a = load_model("random:tiny-qwen3", seed=4).hf_model.state_dict()
    b = load_model("random:tiny-qwen3", seed=4).hf_model.state_dict()
    c = load_model("random:tiny-qwen3", seed=5).hf_model.state_dict()
    key = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("random:qwen3.5-27b", "unknown preset"),
        ("random:gpt5", "unknown preset"),
        ("/nonexistent/model.gguf", "no such GGUF file"),
        ("/nonexistent/dir", "neither random:<preset>"),
    ],
)
def test_bad_model_specs_are_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(SpdsimError, match=message) as info:
        load_model(spec)
    assert "\n" not in str(info.value)


def test_not_a_hf_directory(tmp_path: Path) -> None:
    with pytest.raises(SpdsimError, match="no config.json"):
        load_model(str(tmp_path))


def test_smollm2_override_with_wrong_hash_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF not really")
    monkeypatch.setenv(SMOLLM2_ENV, str(fake))
    with pytest.raises(SpdsimError, match="expected b179c9523d0e6a0f"):
        fetch_smollm2_gguf(tmp_path)
    monkeypatch.setenv(SMOLLM2_ENV, str(tmp_path / "missing.gguf"))
    with pytest.raises(SpdsimError, match="no such file"):
        fetch_smollm2_gguf(tmp_path)


def test_byte_tokenizer_round_trip_and_template() -> None:
    tok = ByteTokenizer()
    assert tok.decode(tok.encode("héllo")) == "héllo"
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")


@pytest.mark.skipif(not smollm2_cached(), reason="smollm2-135m not converted in the cache")
def test_smollm2_generates_coherent_text() -> None:
    from executor.prompts import chat_token_ids
    from executor.schedules.ar import GenerationConfig, generate_ar

    fast, loaded = load_fast_model("smollm2-135m")
    assert fast.cfg.num_layers == 30 and fast.cfg.tie_word_embeddings
    prompt = chat_token_ids(loaded.tokenizer, "What is the capital of France?")
    out = generate_ar(
        fast, prompt, GenerationConfig(max_new_tokens=24, stop_token_ids=(loaded.tokenizer.eos_token_id,))
    )
    assert "Paris" in loaded.tokenizer.decode(list(out.tokens))


def test_a_fused_layer_variant_is_refused_for_a_hybrid_model_in_one_line() -> None:
    from executor.models import compile_layer_variant, load_fast_model

    hybrid, _ = load_fast_model("random:tiny-qwen3.5", max_seq_len=64)
    with pytest.raises(SpdsimError, match="no fused layer"):
        compile_layer_variant(hybrid, "fused+pdl")


def test_the_gemv_layer_variant_serves_a_hybrid_model() -> None:
    """Every one-token matmul of the hybrid's compiled layers goes through executor.gemv (no cuBLAS call on a GPU)."""
    from unittest import mock

    from executor.models import compile_layer_variant, load_fast_model

    hybrid, _ = load_fast_model("random:tiny-qwen3.5", max_seq_len=64)
    with mock.patch.object(type(hybrid), "compile_layers") as compile_layers:
        compile_layer_variant(hybrid, "gemv")
    compile_layers.assert_called_once_with(None, gemv=True)
