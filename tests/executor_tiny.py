"""Tiny random models and prompts shared by the executor schedule tests.

Importing this sets torch to one intra-op thread: on the 2-core CI machine (shared with other test processes)
OpenMP threads oversubscribe the cores and make tiny-model ops 10-25x slower.
"""

import numpy as np
import torch
from distributed_tiny import tiny_config_fields
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from executor.fastmodel import FastModel
from executor.schedules.ar import GenerationConfig, generate_ar

torch.set_num_threads(1)

VOCAB = 128


def tiny_model(seed=0, family="qwen3", vocab=VOCAB, layers=6, device="cpu"):
    """A seeded random Qwen3 or Llama model (hidden 32) as a FastModel."""
    config_class, model_class = (
        (Qwen3Config, Qwen3ForCausalLM) if family == "qwen3" else (LlamaConfig, LlamaForCausalLM)
    )
    config = config_class(**tiny_config_fields(vocab, layers, 512))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = model_class(config)
    return FastModel.from_hf(hf.eval(), device=device, max_seq_len=512)


def prompts(count=20, seed=1, vocab=VOCAB):
    rng = np.random.default_rng(seed)
    return [(f"p{i}", rng.integers(0, vocab, rng.integers(2, 9)).tolist()) for i in range(count)]


def greedy_ar(model, prompt_set, new_tokens):
    """The AR schedule's greedy tokens (the losslessness reference)."""
    gen = GenerationConfig(max_new_tokens=new_tokens, use_graphs=False)
    return [generate_ar(model, tokens, gen).tokens for _, tokens in prompt_set]


def assert_lossless(result, reference):
    for run, expected in zip(result.prompts, reference, strict=True):
        assert run.tokens == tuple(expected), run.prompt_id


def second_token_marginal(model, prompt):
    """P(second generated token) at T = 1: Σ_t1 p(t1 | prompt) · p(t2 | prompt, t1), from the target itself."""
    vocab = model.cfg.vocab_size
    with torch.inference_mode():
        first = torch.softmax(
            model.forward(torch.tensor([prompt]), torch.arange(len(prompt)), model.new_cache(32))[0, -1], -1
        )
        marginal = torch.zeros(vocab)
        for t1 in range(vocab):
            ids = torch.tensor([prompt + [t1]])
            logits = model.forward(ids, torch.arange(len(prompt) + 1), model.new_cache(32))[0, -1]
            marginal += first[t1] * torch.softmax(logits, -1)
    return marginal.numpy()


def chisquare_pvalue(samples, expected_probs):
    """Goodness of fit of integer samples to expected probabilities (cells with expectation < 5 pooled)."""
    from scipy.stats import chisquare

    n = len(samples)
    expected_probs = np.asarray(expected_probs, dtype=np.float64)
    expected_probs = expected_probs / expected_probs.sum()
    counts = np.bincount(samples, minlength=len(expected_probs))
    keep = expected_probs * n >= 5
    observed = np.append(counts[keep], counts[~keep].sum())
    wanted = np.append(expected_probs[keep], expected_probs[~keep].sum()) * n
    if wanted[-1] == 0:
        observed, wanted = observed[:-1], wanted[:-1]
    return chisquare(observed, wanted / wanted.sum() * observed.sum(), sum_check=False).pvalue
