"""AR decoding over the fast model equals transformers' greedy generate token for token."""

from __future__ import annotations

import pytest
import torch

from executor.fastmodel import FastModel
from executor.graphs import GraphCache
from executor.models import load_model
from executor.schedules.ar import GenerationConfig, SamplingConfig, generate_ar, warp_probs


def _prompts(vocab: int, count: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(11)
    return [torch.randint(0, vocab, (3 + 4 * i,), generator=gen).tolist() for i in range(count)]


@pytest.mark.parametrize("spec", ["random:tiny-qwen3", "random:tiny-llama"])
def test_greedy_equals_transformers_generate(spec: str) -> None:
    hf = load_model(spec, seed=7).hf_model
    fast = FastModel.from_hf(hf, max_seq_len=256)
    for prompt in _prompts(fast.cfg.vocab_size, 6):
        ids = torch.tensor([prompt])
        ref = hf.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False, eos_token_id=None
        )[0, len(prompt) :].tolist()
        out = generate_ar(fast, prompt, GenerationConfig(max_new_tokens=16))
        assert list(out.tokens) == ref
        assert len(out.step_us) == 15 and out.prefill_us > 0
        starts = out.step_start_us  # since the prefill's start: each step starts after the one before ends
        assert len(starts) == 15 and starts[0] >= out.prefill_us
        assert all(a + d <= b for a, d, b in zip(starts, out.step_us, starts[1:], strict=False))


@pytest.fixture(scope="module")
def fast() -> FastModel:
    return FastModel.from_hf(load_model("random:tiny-qwen3", seed=1).hf_model, max_seq_len=256)


def test_stop_token_ends_generation(fast: FastModel) -> None:
    prompt = _prompts(fast.cfg.vocab_size, 1)[0]
    full = generate_ar(fast, prompt, GenerationConfig(max_new_tokens=12)).tokens
    stopped = generate_ar(fast, prompt, GenerationConfig(max_new_tokens=12, stop_token_ids=(full[4],))).tokens
    assert stopped == full[: full.index(full[4]) + 1]


def test_sampling_is_seeded(fast: FastModel) -> None:
    prompt = _prompts(fast.cfg.vocab_size, 1)[0]

    def run(seed: int) -> tuple[int, ...]:
        return generate_ar(
            fast, prompt, GenerationConfig(16, SamplingConfig(temperature=1.0, seed=seed))
        ).tokens

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_warp_probs_top_k_and_top_p() -> None:
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    top2 = warp_probs(logits, SamplingConfig(temperature=1.0, top_k=2))
    assert (top2[0, 2:] == 0).all() and torch.isclose(top2.sum(), torch.tensor(1.0))
    nucleus = warp_probs(logits, SamplingConfig(temperature=1.0, top_p=0.5))
    assert nucleus[0, 0] == 1.0  # the top token alone holds > 0.5 of the mass
    flat = warp_probs(logits, SamplingConfig(temperature=1e6))
    assert torch.allclose(flat, torch.full_like(flat, 0.2), atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compiled", [False, True])
def test_gpu_graphed_ar_equals_eager_ar(compiled: bool) -> None:
    hf = load_model("random:tiny-llama", device="cuda", seed=2).hf_model
    fast = FastModel.from_hf(hf, max_seq_len=1024)
    if compiled:
        fast.compile_layers()
    graphs = GraphCache(enabled=True)
    cache = fast.new_cache(1024)
    for prompt in _prompts(fast.cfg.vocab_size, 7)[4:]:  # 19..27 tokens: prefill stays eager
        eager = generate_ar(fast, prompt, GenerationConfig(max_new_tokens=300, use_graphs=False))
        graphed = generate_ar(fast, prompt, GenerationConfig(max_new_tokens=300), cache=cache, graphs=graphs)
        assert graphed.tokens == eager.tokens
    assert len(graphs) == 2  # one capture per KV bucket (256, 512), reused across prompts
