"""Single-process SPD schedule: lossless against greedy AR (several n, uneven splits, untrained drafter and
synthetic acceptance), the n−1 refill after every rejection, ρ against 1/(1+(n−1)(1−α)), T > 0 distribution."""

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

from executor.heads.layers import base_config_of
from executor.heads.spd_v11 import SpdHeadConfig, SpeculationModuleV11
from executor.schedules import run_method
from executor.schedules.common import DecodeOptions
from executor.schedules.spd import run_spd
from executor.stages import split_layers
from spdsim.errors import SpdsimError

LAYERS = 4
NEW = 16


@pytest.fixture(scope="module")
def model():
    return tiny_model(layers=LAYERS)


@pytest.fixture(scope="module")
def reference(model):
    return greedy_ar(model, prompts(), NEW)


@pytest.mark.parametrize(
    "split",
    [
        {"stages": 2},
        {"stages": 4},
        {"stage_layers": [3, 1]},
        {"stage_layers": [2, 1, 1], "aggr_feature_bound": "0,2,3"},  # "auto" (0,1,3,4) is refused for it
    ],
)
def test_untrained_drafter_is_lossless(model, reference, split):
    result = run_method("spd", model, prompts(), max_new_tokens=NEW, **split)
    assert_lossless(result, reference)


@pytest.mark.parametrize(
    "split,alpha,spec_layers",
    [
        ({"stages": 2}, 0.5, 1),
        ({"stage_layers": [2, 1, 1], "aggr_feature_bound": "0,2,3"}, 0.7, 2),
        ({"stages": 4}, 0.6, 1),
        ({"stages": 2}, 1.0, 1),
    ],
)
def test_synthetic_acceptance_is_lossless_and_refills_n_minus_1_cycles(
    model, reference, split, alpha, spec_layers
):
    result = run_method(
        "spd", model, prompts(), max_new_tokens=NEW, synthetic_alpha=alpha, spec_layers=spec_layers, **split
    )
    assert_lossless(result, reference)
    n = result.config["stages"]
    if alpha == 1.0:
        assert result.acceptance_rate == 1.0
    for run in result.prompts:
        flags = [row["accepted"] for row in run.trace]
        assert len(flags) == run.verifications == len(run.tokens) - 1
        # N_steps = (N − 1) + (n − 1)(1 + R) (docs/spd.md §4.2), minus the refill a final rejection never needs.
        assert run.decode_steps == len(flags) + (n - 1) * (1 + flags.count(0) - int(not flags[-1]))
        assert [cycle.state for cycle in run.cycles[: n - 1]] == ["fill"] * (n - 1)
        verify_cycles = [c.index for c in run.cycles if c.tokens]
        for v, (this, following) in enumerate(zip(verify_cycles, verify_cycles[1:], strict=False)):
            gap = run.cycles[this + 1 : following]
            assert len(gap) == (0 if flags[v] else n - 1)
            assert all(c.state == "refill" and c.tokens == 0 for c in gap)
        expected_states = ["refill"] + ["saturated" if f else "refill" for f in flags[:-1]]
        assert [row["state"] for row in run.trace] == expected_states


@pytest.mark.parametrize("alpha,n", [(0.5, 2), (0.8, 4)])
def test_tokens_per_cycle_matches_the_closed_form(model, alpha, n):
    result = run_method(
        "spd", model, prompts(count=20, seed=7), max_new_tokens=32, synthetic_alpha=alpha, stages=n, seed=11
    )
    verifications = sum(p.verifications for p in result.prompts)
    rejects = verifications - sum(p.accepted for p in result.prompts)
    steps = sum(p.decode_steps for p in result.prompts)
    # Acceptance is Bernoulli(α): the rejection count lies within 4σ of its mean.
    sigma = np.sqrt(verifications * alpha * (1 - alpha))
    assert abs(rejects - verifications * (1 - alpha)) <= 4 * sigma
    # Steady-state ρ (the fills of the 20 starts removed) against 1/(1+(n−1)(1−α)), tolerance from the same 4σ.
    fills = (n - 1) * len(result.prompts)
    rho_steady = verifications / (
        steps - fills + (n - 1) * sum(not p.trace[-1]["accepted"] for p in result.prompts)
    )
    rho_closed = 1 / (1 + (n - 1) * (1 - alpha))
    tolerance = 4 * (n - 1) * rho_closed**2 * np.sqrt(alpha * (1 - alpha) / verifications)
    assert abs(rho_steady - rho_closed) <= tolerance + 1e-12
    assert result.tokens_per_cycle == pytest.approx(verifications / steps)


def stage_forwards(result) -> int:
    return sum(key.startswith("stage") for p in result.prompts for c in p.cycles for key in c.phases_us)


@pytest.mark.parametrize(
    "split", [{"stages": 2}, {"stage_layers": [2, 1, 1], "aggr_feature_bound": "0,2,3"}, {"stages": 4}]
)
def test_drain_after_a_rejection_keeps_tokens_and_cycles_at_more_stage_work(model, reference, split):
    """Issue 15 item 4: draining the rejected in-flight tokens (no flush, no crop; position masking makes their
    KV writes harmless) gives today's flush's tokens and cycles, and n(n−1)/2 more stage forwards per rejection
    followed by a refill: the target's token still needs n cycles to exit, so nothing is saved."""
    runs = {
        flush: run_method(
            "spd", model, prompts(), max_new_tokens=NEW, synthetic_alpha=0.6, seed=3, flush=flush, **split
        )
        for flush in ("flush", "drain")
    }
    flushed, drained = runs["flush"], runs["drain"]
    n = flushed.config["stages"]
    assert_lossless(drained, reference)
    refilled = 0
    for got, want in zip(drained.prompts, flushed.prompts, strict=True):
        assert got.tokens == want.tokens
        assert [(c.index, c.state, c.tokens) for c in got.cycles] == [
            (c.index, c.state, c.tokens) for c in want.cycles
        ]
        refilled += sum(not row["accepted"] for row in want.trace[:-1])
    assert refilled > 0
    assert stage_forwards(drained) - stage_forwards(flushed) == n * (n - 1) // 2 * refilled
    assert drained.config["flush"] == "drain" and "flush" not in flushed.config
    with pytest.raises(SpdsimError, match="flush: unknown 'spill'"):
        run_method("spd", model, prompts(2), stages=2, flush="spill")


def test_llama_base_is_lossless():
    llama = tiny_model(family="llama", layers=4)
    expected = greedy_ar(llama, prompts(count=20, seed=3), 16)
    result = run_method(
        "spd", llama, prompts(count=20, seed=3), max_new_tokens=16, stages=2, synthetic_alpha=0.7
    )
    assert_lossless(result, expected)


def test_sampling_preserves_the_target_distribution():
    """At T = 1 the second generated token (the first verified draft) follows the target's marginal."""
    target = tiny_model(seed=5, vocab=8, layers=2)
    with torch.no_grad():
        target.lm_head_weight.mul_(12.0)  # peaky target, far from the untrained drafter's q
    prompt = [3, 1, 4]
    expected = second_token_marginal(target, prompt)
    runs = 600
    result = run_method("spd", target, [prompt] * runs, max_new_tokens=2, temperature=1.0, stages=2, seed=123)
    accepted = sum(p.accepted for p in result.prompts)
    assert 30 < accepted < runs - 30  # both branches (accept, residual resample) exercised
    assert chisquare_pvalue([p.tokens[1] for p in result.prompts], expected) > 1e-3


def test_bad_inputs(model):
    base = base_config_of(model)
    drafter = SpeculationModuleV11(base, SpdHeadConfig.build(base, num_stages=2, num_spec_layers=1))
    with pytest.raises(SpdsimError, match="built for stages"):
        run_spd(model, drafter, prompts(2), split_layers(LAYERS, 4), DecodeOptions())
    with pytest.raises(SpdsimError, match="does not divide"):
        run_method("spd", model, prompts(2), stages=3)
    with pytest.raises(SpdsimError, match="temperature 0"):
        run_method("spd", model, prompts(2), stages=2, synthetic_alpha=0.5, temperature=1.0)
    with pytest.raises(SpdsimError, match="synthetic_alpha"):
        run_method("spd", model, prompts(2), stages=2, synthetic_alpha=1.5)
    with pytest.raises(SpdsimError, match="do not apply"):
        run_method("spd", model, prompts(2), stages=2, k=3)
    with pytest.raises(
        SpdsimError, match="depth 2 .* has not reached"
    ):  # reference depth mapping, uneven split
        run_method("spd", model, prompts(2), stage_layers=[2, 1, 1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lossless_on_cuda_with_streams():
    gpu = tiny_model(layers=LAYERS, device="cuda")
    expected = greedy_ar(gpu, prompts(), NEW)
    for alpha in (None, 0.8):
        result = run_method(
            "spd",
            gpu,
            prompts(),
            max_new_tokens=NEW,
            stage_layers=[2, 1, 1],
            aggr_feature_bound="0,2,3",
            synthetic_alpha=alpha,
        )
        assert_lossless(result, expected)
        assert all("stage0" in c.phases_us for p in result.prompts for c in p.cycles)


def test_a_saved_head_runs_with_the_split_it_was_trained_for(model, reference, tmp_path):
    from executor.heads.checkpoint import save_spd_checkpoint
    from executor.schedules import lossless_check

    base = base_config_of(model)
    head = SpdHeadConfig.build(
        base, num_stages=3, num_spec_layers=1, stage_layers=[2, 1, 1], aggr_feature_bound="0,2,3"
    )
    save_spd_checkpoint(SpeculationModuleV11(base, head), base, tmp_path / "head.pt")
    result = run_method("spd", model, prompts(), max_new_tokens=NEW, head=tmp_path / "head.pt")
    assert result.config["stage_layers"] == [2, 1, 1]
    assert_lossless(result, reference)
    assert lossless_check(model, prompts(), result) == (20, 20)
    with pytest.raises(SpdsimError, match="built for stages"):
        run_method("spd", model, prompts(2), head=tmp_path / "head.pt", stages=2)


def test_graph_keys_are_bounded_and_only_saturated_cycles_sync_once(model, reference, monkeypatch):
    """Draft graphs per row count (1..n+1), one per stage depth, one verify (times the attention windows); the
    decode loop reads the device once per saturated cycle (the verify outcome) and never in fill/refill."""
    from executor.graphs import GraphCache
    from executor.schedules import spd as spd_module

    keys = []

    class RecordingGraphs(GraphCache):
        def run(self, key, fn, *inputs):
            keys.append(key)
            return super().run(key, fn, *inputs)

    syncs = []
    decide = spd_module.SpdPrompt.decide

    def counted_decide(self, step, draft, verify_stream=None):
        crop = decide(self, step, draft, verify_stream)
        syncs.append((step.saturated, self.cycle_syncs[step.index]))
        return crop

    monkeypatch.setattr(spd_module, "GraphCache", RecordingGraphs)
    monkeypatch.setattr(spd_module.SpdPrompt, "decide", counted_decide)
    n = 4
    result = run_method("spd", model, prompts(), max_new_tokens=NEW, synthetic_alpha=0.6, stages=n)
    assert_lossless(result, reference)
    assert len(syncs) == sum(p.decode_steps for p in result.prompts)
    assert all(count == int(saturated) for saturated, count in syncs)
    assert sum(count for _, count in syncs) == sum(p.verifications for p in result.prompts)
    distinct = set(keys)
    windows = {key[2] for key in distinct if key[0] in ("draft", "stage")}
    assert {key[1] for key in distinct if key[0] == "draft"} == set(range(1, n + 2))
    assert {key[1] for key in distinct if key[0] == "stage"} == set(range(n))
    assert {key for key in distinct if key[0] == "verify"} == {("verify",)}
    assert len(distinct) <= (2 * n + 1) * len(windows) + 1


def test_the_warm_up_meets_every_step_key_of_prompts_that_start_in_other_windows(model, monkeypatch):
    """Prompts of 100, 300 and 200 tokens start in windows 256, 512, 256: the warm-up decodes the 200- and the
    300-token prompts, so the timed prompts run no step (graph key) the warm-up did not (a warm-up of the first
    prompt alone left the 300-token prompt's fill capturing inside the clock: 8 s on an H100)."""
    from executor.schedules import spd as spd_module

    seen_after_each_decode = []
    run = spd_module._SpdDecoder.run

    def recorded_run(self, prompt, index):
        out = run(self, prompt, index)
        seen_after_each_decode.append(frozenset(self.graphs.seen))
        return out

    monkeypatch.setattr(spd_module._SpdDecoder, "run", recorded_run)
    rng = np.random.default_rng(3)
    spread = [(f"p{length}", rng.integers(0, 128, length).tolist()) for length in (100, 300, 200)]
    result = run_method("spd", model, spread, max_new_tokens=8, stages=2, warmup=True)
    warm = len(seen_after_each_decode) - len(spread)
    assert warm == result.config["warmup_prompts"] == 2
    assert seen_after_each_decode[-1] == seen_after_each_decode[warm - 1]
    assert {key[2] for key in seen_after_each_decode[-1] if key[0] == "draft"} == {256, 512}
    assert run_method("spd", model, spread[:1], max_new_tokens=2, stages=2).config["warmup_prompts"] == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_steady_state_cycles_do_not_sync_on_cuda(monkeypatch):
    """Under torch.cuda.set_sync_debug_mode("error"), every cycle of the later prompts (all graphs captured by the
    first) runs without a device sync except the verify read (`host_sync.to_host`, which lifts the mode)."""
    from contextlib import contextmanager

    from executor.schedules import spd as spd_module

    gpu = tiny_model(layers=LAYERS, device="cuda")
    prompt = prompts(count=1)[0][1]
    guarded = []

    @contextmanager
    def error_on_sync(step):
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(0)
        guarded.append(step.index)

    run = spd_module._SpdDecoder.run

    def guarded_run(self, prompt_, index):
        self.cycle_guard = error_on_sync if index >= 1 else (lambda step: spd_module.nullcontext())
        return run(self, prompt_, index)

    monkeypatch.setattr(spd_module._SpdDecoder, "run", guarded_run)
    same = [(f"p{i}", prompt) for i in range(3)]
    result = run_method("spd", gpu, same, max_new_tokens=NEW, stages=2, synthetic_alpha=0.7)
    assert_lossless(result, greedy_ar(gpu, same, NEW))
    assert len(guarded) == sum(p.decode_steps for p in result.prompts[1:])
