"""SpecDec++ on the shared chain loop: the acceptance head's stop rule sets each iteration's length (closed form
for a constant acceptance probability), the trace logs that length as `width`, decoding stays lossless, and each
prompt's end is reported between prompts."""

import pytest
import torch
from executor_tiny import assert_lossless, greedy_ar, prompts, tiny_model

from executor.heads.eagle3 import Eagle3Head, Eagle3HeadConfig
from executor.heads.layers import base_config_of
from executor.heads.specdecpp import AcceptanceHead
from executor.schedules.base import TIMED
from executor.schedules.common import DecodeOptions
from executor.specdecpp_chain import run_specdecpp
from spdsim.errors import SpdsimError

NEW = 12
LOGIT = 1.0  # constant acceptance probability p = sigmoid(1) ≈ 0.731


@pytest.fixture(scope="module")
def target():
    return tiny_model(seed=0, layers=4)


@pytest.fixture(scope="module")
def head(target):
    base = base_config_of(target)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Eagle3Head(base, Eagle3HeadConfig.build(base)).eval()


@pytest.fixture(scope="module")
def constant_head(target):
    """p̂ = sigmoid(LOGIT) whatever the hidden state: zero weights, biases (0, LOGIT) on the final linear."""
    acceptance = AcceptanceHead(target.cfg.hidden_size, 2)
    with torch.no_grad():
        acceptance.model[-1].weight.zero_()
        acceptance.model[-1].bias.copy_(torch.tensor([0.0, LOGIT]))
    return acceptance.eval()


# cum after i drafts = p^(i−1); stop at the first i >= k_min with 1 − p^(i−1) > h, else at k_max:
# h=0.5: p^3 ≈ 0.39 < 0.5 -> 4;  h=0.9: p^7 ≈ 0.11 still > 0.1 -> capped at k_max=5;  h=0.1: p^1 < 0.9 but k_min=3
@pytest.mark.parametrize("threshold,k_min,k_max,width", [(0.5, 2, 6, 4), (0.9, 2, 5, 5), (0.1, 3, 6, 3)])
def test_constant_acceptance_stops_at_the_closed_form_length(
    target, head, constant_head, threshold, k_min, k_max, width
):
    result = run_specdecpp(
        target, head, constant_head, prompts(6), threshold, k_min, k_max, DecodeOptions(max_new_tokens=NEW)
    )
    assert_lossless(result, greedy_ar(target, prompts(6), NEW))
    for run in result.prompts:
        assert len(run.trace) == width * run.verifications
        assert {row["width"] for row in run.trace} == {width}
        assert [row["draft_index"] for row in run.trace] == list(range(1, width + 1)) * run.verifications
        assert all(row["method"] == "specdecpp" and row["state"] == "chain" for row in run.trace)
        # the acceptance head runs from the second draft on
        assert all(
            ("acceptance_head" in c.phases_us) == (width > 1) and f"draft{width - 1}" in c.phases_us
            for c in run.cycles
        )
    assert result.config["stop_threshold"] == threshold and result.config["k_max"] == k_max


def test_varying_acceptance_gives_varying_lengths_and_stays_lossless(target, head):
    """A head whose p̂ depends on the hidden state: lengths vary inside [k_min, k_max], tokens are greedy AR's."""
    acceptance = AcceptanceHead(target.cfg.hidden_size, 2)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        acceptance.model[0].linear.bias.zero_()
        acceptance.model[-1].weight.copy_(torch.stack([torch.zeros(32), 14.0 * torch.randn(32)]))
        acceptance.model[-1].bias.copy_(torch.tensor([0.0, 1.65]))
    result = run_specdecpp(
        target, head, acceptance.eval(), prompts(6), 0.3, 2, 6, DecodeOptions(max_new_tokens=NEW)
    )
    assert_lossless(result, greedy_ar(target, prompts(6), NEW))
    lengths = set()
    for run in result.prompts:
        for v in range(run.verifications):
            rows = [row for row in run.trace if row["verify_index"] == v]
            assert {row["width"] for row in rows} == {
                len(rows)
            }  # width = the length this iteration stopped at
            lengths.add(len(rows))
    assert len(lengths) > 1 and lengths <= set(range(2, 7))


@pytest.mark.parametrize("temperature", [0.0, 1.0])  # the graphed path and the sampling path
def test_each_prompt_s_end_is_reported(target, head, constant_head, temperature):
    reports: list[tuple] = []
    options = DecodeOptions(max_new_tokens=4, temperature=temperature)
    result = run_specdecpp(
        target,
        head,
        constant_head,
        prompts(3),
        0.5,
        options=options,
        progress=lambda *report: reports.append(report),
    )
    assert len(result.prompts) == 3
    assert reports == [(TIMED, done, 3) for done in range(4)]


@pytest.mark.parametrize("threshold,k_min,k_max", [(0.0, 2, 4), (1.0, 2, 4), (0.5, 0, 4), (0.5, 5, 4)])
def test_bad_stop_parameters(target, head, constant_head, threshold, k_min, k_max):
    with pytest.raises(SpdsimError, match="specdecpp"):
        run_specdecpp(target, head, constant_head, prompts(1), threshold, k_min, k_max)


def test_synthetic_acceptance_is_refused(target, head, constant_head):
    with pytest.raises(SpdsimError, match="synthetic"):
        run_specdecpp(
            target, head, constant_head, prompts(1), 0.5, options=DecodeOptions(synthetic_alpha=0.5)
        )
