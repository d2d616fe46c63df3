"""Chain SD (draft-model, eagle3): lossless against greedy AR, KV crop on reject, and at T > 0 speculative
sampling that preserves the target distribution (F0)."""

import numpy as np
import pytest
import torch
from executor_tiny import (
    assert_lossless,
    chisquare_pvalue,
    greedy_ar,
    prompts,
    second_token_marginal,
    tiny_model,
)
from scipy.stats import chisquare

from executor.heads.eagle3 import Eagle3Head, Eagle3HeadConfig
from executor.heads.layers import base_config_of
from executor.schedules import run_method
from executor.schedules.chain import run_chain
from executor.schedules.common import DecodeOptions, Verifier
from spdsim.errors import SpdsimError

NEW = 16


@pytest.fixture(scope="module")
def target():
    return tiny_model(seed=0, layers=4)


@pytest.fixture(scope="module")
def draft():
    return tiny_model(seed=9, layers=1)


@pytest.fixture(scope="module")
def reference(target):
    return greedy_ar(target, prompts(), NEW)


@pytest.mark.parametrize("k,alpha", [(1, None), (4, None), (3, 0.6)])
def test_draft_model_is_lossless(target, draft, reference, k, alpha):
    result = run_method(
        "draft-model", target, prompts(), max_new_tokens=NEW, draft_model=draft, k=k, synthetic_alpha=alpha
    )
    assert_lossless(result, reference)
    for run in result.prompts:
        assert len(run.trace) == k * run.verifications  # all K rows logged per verification
        for v in range(run.verifications):
            flags = [r["accepted"] for r in run.trace[v * k : (v + 1) * k]]
            assert flags == sorted(flags, reverse=True)  # nothing accepted after the first rejection


def test_target_as_its_own_draft_accepts_everything(target, reference):
    result = run_method("draft-model", target, prompts(), max_new_tokens=NEW, draft_model=target, k=3)
    assert_lossless(result, reference)
    assert result.acceptance_rate == 1.0
    assert all(c.tokens == 4 for p in result.prompts for c in p.cycles[:-1])  # K accepted + bonus


@pytest.mark.parametrize("k,alpha", [(1, None), (3, None), (2, 0.5), (3, 1.0)])
def test_eagle3_is_lossless(target, reference, k, alpha):
    result = run_method("eagle3", target, prompts(), max_new_tokens=NEW, k=k, synthetic_alpha=alpha)
    assert_lossless(result, reference)
    if alpha == 1.0:
        assert result.acceptance_length == pytest.approx(
            result.decode_tokens / sum(p.verifications for p in result.prompts)
        )
        assert all(c.tokens == k + 1 for p in result.prompts for c in p.cycles[:-1])


def test_eagle3_with_a_draft_vocabulary_is_lossless(target, reference):
    base = base_config_of(target)
    head = Eagle3Head(base, Eagle3HeadConfig.build(base, draft_token_ids=list(range(0, 128, 3))))
    result = run_chain(
        target, head, prompts(), "eagle3", 3, DecodeOptions(max_new_tokens=NEW, synthetic_alpha=0.7)
    )
    assert_lossless(result, reference)


@pytest.mark.parametrize("rows,expected", [(40, 40), (0, 128), (None, 128)])
def test_a_random_eagle3_head_drafts_over_the_draft_vocabulary_asked(target, reference, rows, expected):
    """Random heads of timing runs get a trained head's draft lm_head rows (32000 by default, capped at the
    vocabulary; 0 = the target's): the config records what the head had, and decoding stays lossless."""
    opts = {} if rows is None else {"draft_vocab_size": rows}
    result = run_method("eagle3", target, prompts(), max_new_tokens=NEW, k=3, synthetic_alpha=0.6, **opts)
    assert result.config["draft_vocab_size"] == expected
    assert_lossless(result, reference)


def test_synthetic_chain_acceptance_length_matches_the_iid_closed_form(target, draft):
    """τ = (1 − α^{K+1}) / (1 − α) for i.i.d. acceptance (docs/baselines.md F1)."""
    alpha, k = 0.7, 3
    result = run_method(
        "draft-model",
        target,
        prompts(count=20, seed=4),
        max_new_tokens=40,
        draft_model=draft,
        k=k,
        synthetic_alpha=alpha,
        seed=3,
    )
    # Acceptance lengths of completed iterations (the last one may be cut at max_new_tokens).
    lengths = [c.tokens for p in result.prompts for c in p.cycles[:-1]]
    tau = (1 - alpha ** (k + 1)) / (1 - alpha)
    assert abs(np.mean(lengths) - tau) <= 4 * np.std(lengths) / np.sqrt(len(lengths))


def test_verifier_speculative_sampling_reproduces_p():
    """Unit level: x ~ q, then accept w.p. min(1, p/q) else resample norm(max(0, p − q)) gives exactly p."""
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    q = torch.tensor([0.05, 0.1, 0.15, 0.3, 0.4])
    verifier = Verifier(1.0, seed=0, device=torch.device("cpu"))
    draws = torch.multinomial(q, 20000, replacement=True, generator=torch.Generator().manual_seed(1))
    out = [verifier.check(torch.log(p), int(x), q)[1] for x in draws]
    counts = np.bincount(out, minlength=5)
    assert chisquare(counts, p.numpy() * len(out)).pvalue > 1e-3
    # Accepting every draft instead would give q: the same test must reject that.
    assert chisquare(np.bincount(draws.numpy(), minlength=5), p.numpy() * len(out)).pvalue < 1e-6


@pytest.mark.parametrize("kind", ["draft-model", "eagle3"])
def test_chain_sampling_preserves_the_target_distribution(kind):
    vocab = 8
    target = tiny_model(seed=5, vocab=vocab, layers=2)
    draft = tiny_model(seed=6, vocab=vocab, layers=1)
    with torch.no_grad():
        target.lm_head_weight.mul_(12.0)
        draft.lm_head_weight.mul_(12.0)
    prompt = [3, 1, 4]
    expected = second_token_marginal(target, prompt)
    runs = 600
    extra = {"draft_model": draft} if kind == "draft-model" else {}
    result = run_method(
        kind, target, [prompt] * runs, max_new_tokens=2, temperature=1.0, k=2, seed=321, **extra
    )
    first_rows = [p.trace[0]["accepted"] for p in result.prompts]
    assert 30 < sum(first_rows) < runs - 30  # both branches exercised
    assert chisquare_pvalue([p.tokens[1] for p in result.prompts], expected) > 1e-3


@pytest.mark.parametrize(
    "method,opts",
    [
        ("ar", {}),
        ("draft-model", {"k": 2}),
        ("draft-model", {"k": 2, "temperature": 1.0}),  # the eager T > 0 path
        ("eagle3", {"k": 2}),
    ],
)
def test_config_counts_the_warm_up_prompts_one_per_starting_window(target, draft, method, opts):
    """Lengths 5, 300 and 9 start in windows 256, 512, 256: two untimed decodes with warm-up, none without."""
    rng = np.random.default_rng(4)
    spread = [(f"p{length}", rng.integers(0, 128, length).tolist()) for length in (5, 300, 9)]
    if method == "draft-model":
        opts = {**opts, "draft_model": draft}
    for warmup, count in ((True, 2), (False, 0)):
        result = run_method(method, target, spread, max_new_tokens=4, warmup=warmup, **opts)
        assert result.config["warmup_prompts"] == count
        assert len(result.prompts) == len(spread)


def test_bad_inputs(target):
    other_vocab = tiny_model(seed=1, vocab=64, layers=1)
    with pytest.raises(SpdsimError, match="vocab_size 64 differs"):
        run_method("draft-model", target, prompts(2), draft_model=other_vocab)
    with pytest.raises(SpdsimError, match="needs a draft model"):
        run_method("draft-model", target, prompts(2))
    with pytest.raises(SpdsimError, match="k .* must be >= 1"):
        run_method("eagle3", target, prompts(2), k=0)
    with pytest.raises(SpdsimError, match="unknown"):
        run_method("medusa", target, prompts(2))
    with pytest.raises(SpdsimError, match="fixes its draft vocabulary"):
        run_method("eagle3", target, prompts(2), head="any.pt", draft_vocab_size=10)
    with pytest.raises(SpdsimError, match="do not apply"):
        run_method("draft-model", target, prompts(2), draft_model=target, draft_vocab_size=10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lossless_on_cuda():
    gpu_target, gpu_draft = tiny_model(layers=4, device="cuda"), tiny_model(seed=9, layers=1, device="cuda")
    expected = greedy_ar(gpu_target, prompts(), NEW)
    for kind, extra in (("draft-model", {"draft_model": gpu_draft}), ("eagle3", {})):
        result = run_method(
            kind, gpu_target, prompts(), max_new_tokens=NEW, k=3, synthetic_alpha=0.7, **extra
        )
        assert_lossless(result, expected)
