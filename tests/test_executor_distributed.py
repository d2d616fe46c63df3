"""Multi-process SPD on the CPU (gloo): lossless against greedy AR in both drafter placements, the run directory
it writes replays in the simulator, and a killed or stalled rank ends the run with one line naming it."""

import time

import pytest
from distributed_tiny import prompt_set, tiny_source

from executor.distributed import DistributedConfig, DistributedError, run_distributed
from executor.schedules.ar import GenerationConfig, generate_ar
from executor.schedules.common import DecodeOptions

SOURCE = tiny_source(layers=4)
NEW_TOKENS = 14


def greedy(prompts):
    model = SOURCE.build("cpu")
    gen = GenerationConfig(max_new_tokens=NEW_TOKENS, use_graphs=False)
    return [generate_ar(model, tokens, gen).tokens for _, tokens in prompts]


def test_colocated_lossless_synthetic_and_replayable(tmp_path):
    from executor.rundir import write_run_dir
    from spdsim.scenario.acceptance import load_trace

    prompts = prompt_set(3)
    jobs = [
        DecodeOptions(max_new_tokens=NEW_TOKENS),
        DecodeOptions(max_new_tokens=NEW_TOKENS, synthetic_alpha=0.7),
    ]
    run = run_distributed(SOURCE, prompts, DistributedConfig(num_stages=2, timeout_s=90), jobs)
    expected = greedy(prompts)
    assert run.world_size == 2 and run.backend == "gloo"
    for result in run.spd:
        for prompt_run, tokens in zip(result.prompts, expected, strict=True):
            assert prompt_run.tokens == tokens, prompt_run.prompt_id
    synthetic = run.spd[1]
    for prompt_run in synthetic.prompts:
        # every decode token comes from one verification; each rejection costs n-1 = 1 refill cycle (+1 fill)
        rejections = prompt_run.verifications - sum(row["accepted"] for row in prompt_run.trace)
        assert prompt_run.verifications == len(prompt_run.tokens) - 1
        assert prompt_run.decode_steps == prompt_run.verifications + 1 + rejections - (
            prompt_run.trace[-1]["accepted"] == 0
        )
        assert all("stage1" in c.phases_us for c in prompt_run.cycles if c.state == "saturated")
    out = write_run_dir(synthetic, tmp_path / "run")
    trace = load_trace(out / "trace.csv")
    assert trace.accepted_total == synthetic.summary()["accepted"]
    assert len(trace.outcomes) == len(prompts)


def test_own_drafter_rank_lossless():
    prompts = prompt_set(2, seed=5)
    config = DistributedConfig(num_stages=2, colocated=False, timeout_s=90)
    run = run_distributed(
        SOURCE, prompts, config, [DecodeOptions(max_new_tokens=NEW_TOKENS, synthetic_alpha=0.8)]
    )
    assert run.world_size == 3
    for prompt_run, tokens in zip(run.spd[0].prompts, greedy(prompts), strict=True):
        assert prompt_run.tokens == tokens


@pytest.mark.parametrize(
    ("fault", "timeout_s", "message"),
    [
        (("kill", 1, 2), 30.0, "rank 1 (stage 1) died (signal SIGKILL)"),
        (("stall", 1, 2), 3.0, "no answer from rank 1 (stage 1) within 3 s"),
    ],
)
def test_dead_or_stuck_rank_ends_the_run_naming_it(fault, timeout_s, message):
    config = DistributedConfig(num_stages=2, timeout_s=timeout_s, fault=fault)
    started = time.monotonic()
    with pytest.raises(DistributedError) as info:
        run_distributed(SOURCE, prompt_set(1), config, [DecodeOptions(max_new_tokens=NEW_TOKENS)])
    text = str(info.value)
    assert message in text and "\n" not in text
    assert time.monotonic() - started < 60
