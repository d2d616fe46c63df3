"""Synthetic acceptance realises the α it is asked for (per-position plans, re-anchoring), in bf16 as in float32."""

from __future__ import annotations

import pickle
import time

import pytest
import torch
from executor_tiny import prompts, tiny_model

from executor.schedules import run_method
from executor.schedules.common import PhaseTimer, PromptRecorder, SyntheticDrafts


@pytest.fixture(scope="module")
def bf16_model():
    return tiny_model(layers=2).to(torch.bfloat16)


@pytest.mark.parametrize("alpha", [0.6, 0.8, 0.95])
@pytest.mark.parametrize("method", ["eagle3", "spd"])
def test_synthetic_alpha_is_realised_within_0_03_over_2000_verifications_in_bf16(bf16_model, method, alpha):
    opts = {"k": 3} if method == "eagle3" else {"stages": 2}
    result = run_method(
        method,
        bf16_model,
        prompts(count=24 if method == "eagle3" else 8, seed=5),
        max_new_tokens=400,
        synthetic_alpha=alpha,
        seed=2,
        **opts,
    )
    summary = result.summary()
    assert summary["verifications"] >= 2000
    assert summary["nominal_alpha"] == alpha
    assert abs(summary["realised_alpha"] - alpha) <= 0.03, summary["realised_alpha"]


def test_a_committed_token_off_the_reference_re_anchors_it_and_is_counted():
    """A fake target whose continuation of any prefix is (last token + 1) mod V: re-anchoring rebuilds the plan
    from the committed prefix, so planned accepts are the target's tokens again after the divergence."""

    def continue_fn(prefix, count):
        out, last = [], prefix[-1]
        for _ in range(count):
            last = (last + 1) % 50
            out.append(last)
        return out

    synthetic = SyntheticDrafts(1.0, [3], 10, 50, seed=0, continue_fn=continue_fn)
    assert synthetic.planned[:3] == [4, 5, 6]
    assert synthetic.follow([4, 5]) == 0.0 and synthetic.reanchors == 0
    synthetic.follow([4, 5, 9])  # the target committed 9 where the reference said 6
    assert synthetic.reanchors == 1
    assert synthetic.planned[:5] == [4, 5, 9, 10, 11]
    assert synthetic.replace(1 + 3) == 10  # position = prompt length + index


def test_plans_are_seeded_and_realise_alpha_per_position():
    def continue_fn(prefix, count):
        return [7] * count

    plans = [
        SyntheticDrafts(0.7, [1, 2], 20000, 100, seed=s, continue_fn=continue_fn).planned for s in (4, 4, 5)
    ]
    assert plans[0] == plans[1] and plans[0] != plans[2]
    rate = sum(token == 7 for token in plans[0]) / len(plans[0])
    assert abs(rate - 0.7) < 0.015


def test_phase_timer_spans_keep_every_interval_from_the_first_start_and_resolve_sums_them():
    timer = PhaseTimer(torch.device("cpu"))
    for cycle, name in [(0, "draft"), (0, "stage0"), (0, "stage0"), (1, "draft")]:
        with timer.phase(cycle, name):
            time.sleep(0.001)
    spans = timer.spans()
    assert [(c, n) for c, n, _, _ in spans] == [(0, "draft"), (0, "stage0"), (0, "stage0"), (1, "draft")]
    assert spans[0][2] == 0.0 and all(dur >= 1000 for _, _, _, dur in spans)
    for before, after in zip(spans, spans[1:], strict=False):  # serial on the CPU: one after the other
        assert before[2] + before[3] <= after[2]
    totals = timer.resolve()
    assert totals[0]["stage0"] == pytest.approx(spans[1][3] + spans[2][3])
    assert totals[1] == {"draft": spans[3][3]}
    assert PhaseTimer(torch.device("cpu")).spans() == ()


def test_a_frozen_prompt_run_keeps_the_spans_and_survives_pickling():
    timer = PhaseTimer(torch.device("cpu"))
    record = PromptRecorder("p", 3, "spd")
    record.commit(5)
    with timer.phase(0, "draft"):
        pass
    record.cycles.append((0, "fill", 0))
    run = record.freeze(timer)
    assert run.phase_spans == timer.spans() and run.cycles[0].phases_us == {"draft": run.phase_spans[0][3]}
    assert pickle.loads(pickle.dumps(run)) == run
