"""The graph-ready device path of greedy chain SD (executor.schedules.chain_graphed): the same drafts, checks and
trace as the eager loop, one host read per iteration, SpecDec++'s stop rule on the device; on CUDA, graphs are
used, the run is lossless and no other sync happens inside an iteration."""

import pytest
import torch
from executor_tiny import assert_lossless, greedy_ar, prompts, tiny_model

import executor.schedules.chain_graphed as chain_graphed
from executor.graphs import GraphCache
from executor.heads.eagle3 import Eagle3Head, Eagle3HeadConfig, draft_vocabulary
from executor.heads.layers import base_config_of
from executor.heads.specdecpp import AcceptanceHead, stop_length
from executor.schedules.chain import Eagle3Drafter, _DraftModel, run_chain, run_chain_prompt
from executor.schedules.common import DecodeOptions, as_prompts
from executor.specdecpp_chain import _AcceptanceStop, run_specdecpp

NEW = 14


@pytest.fixture(scope="module")
def target():
    return tiny_model(seed=0, layers=4)


@pytest.fixture(scope="module")
def head(target):
    base = base_config_of(target)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Eagle3Head(base, Eagle3HeadConfig.build(base)).eval()


def eager_traces(target, drafter, kind, k, options, collect, new_stop_rule=None):
    """The eager loop (the T > 0 path) run at T = 0: the reference for drafts and trace rows."""

    def make(tokens, feats):
        if kind == "draft-model":
            return _DraftModel(drafter, tokens, options, k)
        return Eagle3Drafter(drafter, target, len(tokens), feats, options, k, new_stop_rule)

    with torch.inference_mode():
        return [
            run_chain_prompt(target, p, i, options, kind, k, collect, make).trace
            for i, p in enumerate(as_prompts(prompts(6)))
        ]


@pytest.mark.parametrize("kind,alpha", [("eagle3", None), ("eagle3", 0.6), ("draft-model", None)])
def test_device_path_drafts_and_logs_what_the_eager_loop_does(target, head, kind, alpha):
    k = 3
    drafter = head if kind == "eagle3" else tiny_model(seed=9, layers=1)
    options = DecodeOptions(max_new_tokens=NEW, synthetic_alpha=alpha)
    collect = head.head_config.feature_layers if kind == "eagle3" else ()
    result = run_chain(target, drafter, prompts(6), kind, k, options)
    assert_lossless(result, greedy_ar(target, prompts(6), NEW))
    for run, trace in zip(
        result.prompts, eager_traces(target, drafter, kind, k, options, collect), strict=True
    ):
        assert run.trace == trace


def test_synthetic_reference_is_computed_in_the_verify_shape(target, head, monkeypatch):
    """The device path's synthetic reference comes from (K+1)-row passes, the kernels its verify runs (on a GPU in
    bf16 an AR reference left the chain's tokens: realised alpha 0.1 under nominal); the eager loop keeps AR's."""
    import executor.schedules.base as base

    asked = []
    original = base.greedy_continuation

    def recording(model, prefix, count, rows=1, use_graphs=True):
        asked.append(rows)
        return original(model, prefix, count, rows, use_graphs)

    monkeypatch.setattr(base, "greedy_continuation", recording)
    options = DecodeOptions(max_new_tokens=NEW, synthetic_alpha=0.8)
    result = run_chain(target, head, prompts(2), "eagle3", 3, options)
    assert asked and set(asked) == {4}
    assert_lossless(result, greedy_ar(target, prompts(2), NEW))
    asked.clear()
    eager_traces(target, head, "eagle3", 3, options, head.head_config.feature_layers)
    assert asked and set(asked) == {1}


def test_one_host_read_per_iteration(target, head, monkeypatch):
    reads = []
    original = chain_graphed.read_outcome
    monkeypatch.setattr(chain_graphed, "read_outcome", lambda packed: reads.append(1) or original(packed))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("host sync via .item()"))
    result = run_chain(target, head, prompts(4), "eagle3", 3, DecodeOptions(max_new_tokens=NEW))
    assert (
        len(reads)
        == sum(p.verifications for p in result.prompts)
        == sum(p.decode_steps for p in result.prompts)
    )


def test_device_stop_rule_is_the_host_rule():
    torch.manual_seed(0)
    for _ in range(200):
        k_max, k_min = int(torch.randint(1, 8, ())), int(torch.randint(1, 4, ()))
        k_min = min(k_min, k_max)
        probs, threshold = torch.rand(k_max), float(torch.rand(()) * 0.98 + 0.01)
        cumulative, expected = 1.0, k_max
        for drafted in range(1, k_max + 1):
            if drafted > 1:
                cumulative *= float(probs[drafted - 1])
            if drafted >= k_min and 1.0 - cumulative > threshold:
                expected = drafted
                break
        assert int(stop_length(probs, threshold, k_min)) == expected


def test_specdecpp_device_path_stops_where_the_eager_rule_does(target, head):
    acceptance = AcceptanceHead(target.cfg.hidden_size, 2)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        acceptance.model[0].linear.bias.zero_()
        acceptance.model[-1].weight.copy_(torch.stack([torch.zeros(32), 14.0 * torch.randn(32)]))
        acceptance.model[-1].bias.copy_(torch.tensor([0.0, 1.65]))
    acceptance = acceptance.eval()
    options = DecodeOptions(max_new_tokens=NEW)
    result = run_specdecpp(target, head, acceptance, prompts(6), 0.3, 2, 6, options)
    expected = eager_traces(
        target,
        head,
        "eagle3",
        6,
        options,
        head.head_config.feature_layers,
        lambda: _AcceptanceStop(acceptance, 0.3, 2),
    )
    for run, trace in zip(result.prompts, expected, strict=True):
        assert [(r["width"], r["drafted_token"], r["accepted"]) for r in run.trace] == [
            (r["width"], r["drafted_token"], r["accepted"]) for r in trace
        ]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("draft_share", [1, 2], ids=["full-vocabulary", "half-vocabulary"])
def test_eagle3_graphed_on_cuda_is_lossless_without_extra_syncs(monkeypatch, draft_share):
    """With a draft vocabulary (as trained heads and the random heads of real shapes have) the id lookup is captured
    too: an indexing that read its 0-dim index on the host invalidated the capture (H100, session 7)."""
    model = tiny_model(layers=4, device="cuda")
    base = base_config_of(model)
    ids = draft_vocabulary(base.vocab_size, base.vocab_size // draft_share)
    with torch.random.fork_rng(devices=["cuda"]):
        torch.manual_seed(0)
        head = Eagle3Head(base, Eagle3HeadConfig.build(base, draft_token_ids=ids)).to("cuda").eval()
    expected = greedy_ar(model, prompts(), NEW)
    graphs = GraphCache()
    monkeypatch.setattr(chain_graphed, "SYNC_CHECK", True)
    result = run_chain(model, head, prompts(), "eagle3", 3, DecodeOptions(NEW, synthetic_alpha=0.8), graphs)
    assert_lossless(result, expected)
    assert len(graphs) > 0
    assert 0.6 < result.realised()["realised_alpha"] <= 1.0
