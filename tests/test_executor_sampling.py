"""executor/sampling.py: HF-equivalent temperature / top-k / top-p warping, speculative sampling that keeps the
warped target distribution (chi-square over many draws on a tiny model, SPD and chain SD), defaults unchanged."""

import numpy as np
import pytest
import torch
from executor_tiny import chisquare_pvalue, tiny_model
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from typer.testing import CliRunner

from executor.cli import app
from executor.sampling import AUTHORS_TOP_K, AUTHORS_TOP_P, Warp, speculative_accept, warp_probs
from executor.schedules import run_method
from executor.schedules.common import DecodeOptions, Verifier
from spdsim.errors import SpdsimError


@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(1.0, 50, 0.95), (0.7, 5, 1.0), (1.3, 0, 0.5), (1.0, 0, 1.0)]
)
def test_warp_equals_transformers_warpers(temperature, top_k, top_p):
    logits = torch.randn(3, 200, generator=torch.Generator().manual_seed(0)) * 3
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    expected = torch.softmax(scores, dim=-1)
    got = warp_probs(logits, Warp(temperature, top_k, top_p))
    torch.testing.assert_close(got, expected)
    if top_k:
        assert int((got[0] > 0).sum()) <= top_k


def test_speculative_accept_emits_the_target_distribution():
    gen = torch.Generator().manual_seed(1)
    p = warp_probs(torch.randn(12, generator=gen) * 2, Warp(1.0, 6, 0.9))
    q = warp_probs(torch.randn(12, generator=gen) * 2, Warp(1.0, 8, 0.95))
    draws = []
    for _ in range(6000):
        draft = int(torch.multinomial(q, 1, generator=gen))
        draws.append(speculative_accept(p, q, draft, gen)[1])
    assert set(draws) <= set(torch.nonzero(p).flatten().tolist())  # nothing outside the target's nucleus
    assert chisquare_pvalue(draws, p.numpy()) > 0.01


def warped_marginals(model, prompt, warp):
    """(first token, second token) distributions at `warp`, from the target itself."""
    vocab = model.cfg.vocab_size
    with torch.inference_mode():
        logits = model.forward(torch.tensor([prompt]), torch.arange(len(prompt)), model.new_cache(32))[0, -1]
        first = warp_probs(logits, warp)
        second = torch.zeros(vocab)
        for t1 in range(vocab):
            ids = torch.tensor([prompt + [t1]])
            logits = model.forward(ids, torch.arange(len(prompt) + 1), model.new_cache(32))[0, -1]
            second += first[t1] * warp_probs(logits, warp)
    return first.numpy(), second.numpy()


@pytest.fixture(scope="module")
def peaky_target():
    target = tiny_model(seed=5, vocab=8, layers=2)
    with torch.no_grad():
        target.lm_head_weight.mul_(
            6.0
        )  # far from the untrained drafter's q, yet several tokens in the nucleus
    return target


WARP = Warp(1.0, 5, 0.8)  # vocab 8: top-k and top-p both cut


@pytest.mark.parametrize("seed", [123, 2024])
@pytest.mark.parametrize("method", ["spd", "draft-model"])
def test_top_k_top_p_speculative_sampling_keeps_the_target_distribution(peaky_target, seed, method):
    prompt = [3, 1, 4]
    first, second = warped_marginals(peaky_target, prompt, WARP)
    assert (first == 0).sum() >= 3 and (second > 0).sum() >= 3  # the warp truncates, several tokens remain
    runs = 500
    extra = (
        {"stages": 2} if method == "spd" else {"k": 2, "draft_model": tiny_model(seed=8, vocab=8, layers=1)}
    )
    result = run_method(
        method,
        peaky_target,
        [prompt] * runs,
        max_new_tokens=2,
        temperature=WARP.temperature,
        top_k=WARP.top_k,
        top_p=WARP.top_p,
        seed=seed,
        **extra,
    )
    accepted = sum(p.accepted for p in result.prompts)
    assert 20 < accepted < runs - 20  # both branches (accept, residual resample) exercised
    assert chisquare_pvalue([p.tokens[0] for p in result.prompts], first) > 0.01
    assert chisquare_pvalue([p.tokens[1] for p in result.prompts], second) > 0.01
    assert all(first[p.tokens[0]] > 0 and second[p.tokens[1]] > 0 for p in result.prompts)


def test_defaults_stay_temperature_only():
    options = DecodeOptions(temperature=1.0)
    assert (options.top_k, options.top_p) == (0, 1.0)
    verifier = Verifier(0.8, 0, torch.device("cpu"))
    logits = torch.randn(50)
    torch.testing.assert_close(verifier.probs(logits), torch.softmax(logits / 0.8, dim=-1))
    assert (AUTHORS_TOP_K, AUTHORS_TOP_P) == (50, 0.95)


def test_bad_warps_are_one_line_errors():
    with pytest.raises(SpdsimError, match="top_p must lie in"):
        DecodeOptions(temperature=1.0, top_p=0.0).validate()
    with pytest.raises(SpdsimError, match="top_k must be >= 0"):
        DecodeOptions(temperature=1.0, top_k=-1).validate()
    result = CliRunner().invoke(
        app,
        ["run", "--model", "random:tiny-llama", "--device", "cpu", "--top-p", "1.5", "--temperature", "1"],
    )
    assert result.exit_code == 2 and "top_p" in result.output


def test_ar_samples_the_warped_distribution(peaky_target):
    prompt = [3, 1, 4]
    first, _ = warped_marginals(peaky_target, prompt, WARP)
    result = run_method(
        "ar", peaky_target, [prompt] * 400, max_new_tokens=1, temperature=1.0, top_k=5, top_p=0.8, seed=7
    )
    draws = [p.tokens[0] for p in result.prompts]
    assert np.all(first[draws] > 0)
    assert chisquare_pvalue(draws, first) > 0.01
