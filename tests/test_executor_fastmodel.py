"""The fast decoder against transformers' eager model: same logits, same hidden states, same RoPE."""

from __future__ import annotations

import pytest
import torch

from executor.fastmodel import FastModel, ModelConfig, dense_strides, rope_inv_freq
from executor.models import load_model, smollm2_cached

PRESETS = ("random:tiny-qwen3", "random:tiny-llama")


def _pair(spec: str, device: str = "cpu", dtype: str = "float32") -> tuple[FastModel, object]:
    hf = load_model(spec, device=device, dtype=dtype, seed=3).hf_model
    return FastModel.from_hf(hf, max_seq_len=256), hf


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("spec", PRESETS)
def test_logits_match_transformers_full_and_incremental(spec: str) -> None:
    fast, hf = _pair(spec)
    tokens = torch.randint(0, fast.cfg.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(tokens).logits
        whole = fast(tokens, torch.arange(40), fast.new_cache(128))
        cache = fast.new_cache(128)
        chunks = [
            fast(tokens[:, a:b], torch.arange(a, b), cache, kv_len=64)
            for a, b in ((0, 17), (17, 18), (18, 40))
        ]
    assert _rel(whole, ref) < 1e-5
    assert _rel(torch.cat(chunks, dim=1), ref) < 1e-5


@pytest.mark.parametrize("spec", PRESETS)
def test_collected_hidden_states_are_hf_pre_norm_states(spec: str) -> None:
    fast, hf = _pair(spec)
    tokens = torch.randint(0, fast.cfg.vocab_size, (1, 12), generator=torch.Generator().manual_seed(2))
    layers = fast.num_layers
    with torch.no_grad():
        ref = hf(tokens, output_hidden_states=True).hidden_states
        cache = fast.new_cache(64)
        positions = torch.arange(12)
        h, first = fast.forward_layers(fast.embed(tokens), positions, 0, 2, cache, collect=range(layers + 1))
        out, second = fast.forward_layers(h, positions, 2, layers, cache, collect=range(layers + 1))
    states = {**first, **second}
    assert sorted(states) == list(range(layers + 1))
    for k in range(layers):  # HF replaces its last entry by the post-norm state
        assert _rel(states[k], ref[k]) < 1e-5
    assert _rel(fast.final_norm(out), ref[layers]) < 1e-5
    assert _rel(fast.head(out), hf(tokens).logits) < 1e-5


def test_llama3_rope_scaling_matches_transformers() -> None:
    hf = load_model("random:tiny-llama").hf_model
    cfg = ModelConfig.from_hf(hf.config)
    assert cfg.rope_llama3 == (8.0, 1.0, 4.0, 64)
    assert torch.allclose(rope_inv_freq(cfg), hf.model.rotary_emb.inv_freq.float(), rtol=1e-6, atol=0)
    assert not torch.allclose(
        rope_inv_freq(cfg.__class__(**{**cfg.__dict__, "rope_llama3": None})), rope_inv_freq(cfg)
    )


@pytest.mark.parametrize("spec", PRESETS)
def test_parameter_count_matches_transformers(spec: str) -> None:
    hf = load_model(spec).hf_model
    assert ModelConfig.from_hf(hf.config).num_parameters() == sum(p.numel() for p in hf.parameters())


def test_unsupported_model_type_is_refused() -> None:
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="gpt2"):
        ModelConfig.from_hf(GPT2Config())


@pytest.mark.skipif(not smollm2_cached(), reason="smollm2-135m not converted in the cache")
def test_smollm2_logits_match_transformers() -> None:
    fast, hf = _pair("smollm2-135m")
    tokens = torch.randint(0, 49152, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert _rel(fast(tokens, torch.arange(24), fast.new_cache(64)), hf(tokens).logits) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("spec", PRESETS)
def test_gpu_bf16_and_compiled_layers_match(spec: str) -> None:
    """bf16 error of the fast model (eager and compiled) stays within twice HF's own bf16 error vs float32."""
    fast, hf = _pair(spec, device="cuda", dtype="bfloat16")
    hf32 = load_model(spec, device="cuda", dtype="float32", seed=3).hf_model
    tokens = torch.randint(0, fast.cfg.vocab_size, (1, 8), device="cuda")
    positions = torch.arange(8, device="cuda")
    with torch.no_grad():
        ref = hf32(tokens).logits
        hf_error = _rel(hf(tokens).logits, ref)
        eager = fast(tokens, positions, fast.new_cache(256), kv_len=256)
        fast.compile_layers()
        compiled = fast(tokens, positions, fast.new_cache(256), kv_len=256)
    assert _rel(eager, ref) < 2 * hf_error + 1e-3
    assert _rel(compiled, ref) < 2 * hf_error + 1e-3


def test_qwen2_attention_bias_matches_transformers() -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
    )
    hf = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith("bias"):
                param.normal_()  # HF initialises biases to zero: make them matter
    fast = FastModel.from_hf(hf, max_seq_len=64)
    assert fast.cfg.attention_bias and not fast.cfg.qk_norm
    tokens = torch.randint(0, 128, (1, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert _rel(fast(tokens, torch.arange(10), fast.new_cache(32)), hf(tokens).logits) < 1e-5


def test_dense_strides_are_those_of_a_fresh_tensor() -> None:
    for shape in [(1, 1, 64), (2, 3, 4), (5,), (1, 7, 1)]:
        assert dense_strides(shape) == torch.empty(shape).stride()


def test_the_compiled_head_compiles_once_for_a_slice_and_a_fresh_row() -> None:
    """The last position of a prefill (a slice with a long row stride) and a decode step's row reach the same
    compiled head: one compile, so the first token rounds as every later one."""
    from torch._dynamo.testing import CompileCounter

    fast = FastModel.from_hf(load_model("random:tiny-qwen3", seed=5).hf_model, max_seq_len=256)
    counter = CompileCounter()
    fast.compile_layers(backend=counter)
    hidden = torch.randn(1, 30, fast.cfg.hidden_size)
    with torch.inference_mode():
        sliced = fast.head(hidden[:, -1:])
        frames = counter.frame_count
        fresh = fast.head(hidden[:, -1:].clone())
    assert counter.frame_count == frames == 1
    assert torch.equal(sliced, fresh)
    fast.uncompile_layers()
