"""Tensor-parallel AR on the CPU (gloo, 2 ranks, tiny float32 model): token-identical to single-process greedy
AR, temperature sampling identical to the AR schedule's, rank 0's progress reaching the launcher's callback, a
killed rank named within the timeout, and the run directory it writes replays in ``spdsim validate`` with a
TP-aware profile."""

import json
import time

import pytest
import torch
from distributed_tiny import prompt_set, tiny_source

from executor.distributed import DistributedError
from executor.distributed.comm import Watchdog
from executor.distributed.tp import ShardedModel, check_tp_degree, run_tensor_parallel, step_watch
from executor.schedules.base import TIMED, WARMUP, warmup_prompts
from executor.schedules.common import DecodeOptions, as_prompts
from executor.schedules.dispatch import run_ar
from spdsim.errors import SpdsimError

SOURCE = tiny_source(layers=3)
NEW_TOKENS = 12


def test_one_shard_is_the_full_model():
    """Degree 1: the shard path (its layer_functions) computes exactly what the fast model computes."""
    model = SOURCE.build("cpu")
    shard = ShardedModel(model, 0, 1)
    tokens = torch.tensor([[5, 7, 11, 13]])
    positions = torch.arange(4)
    expected = model(tokens, positions, model.new_cache(16))
    assert torch.equal(shard(tokens, positions, shard.new_cache(16)), expected)


def test_a_step_that_never_finishes_ends_the_rank_with_its_name(monkeypatch):
    """The TP step bound is the link watchdog's: each step's event is watched; a finished one is dropped, one still
    running at its deadline fails the rank with a line naming it (CUDA events stood in for: this runs on CPU)."""

    class Event:
        finished = True

        def record(self):
            pass

        def query(self):
            return Event.finished

    monkeypatch.setattr(torch.cuda, "Event", Event)
    failures: list[str] = []
    watchdog = Watchdog(failures.append, tick_s=0.01)
    mark = step_watch(watchdog, "tp rank 1", timeout_s=0.05)
    mark()
    time.sleep(0.1)
    assert failures == [] and watchdog.pending() == 0
    Event.finished = False
    mark()
    deadline = time.monotonic() + 5
    while not failures and time.monotonic() < deadline:
        time.sleep(0.01)
    watchdog.close()
    assert failures == ["tp rank 1: decode step did not finish within 0.05 s (a peer is dead or stuck)"]


def test_degree_must_divide_heads_and_mlp():
    model = SOURCE.build("cpu")
    check_tp_degree(model.cfg, 2)
    with pytest.raises(SpdsimError, match="num_kv_heads"):
        check_tp_degree(model.cfg, 4)


PROMPTS = prompt_set(3)
JOBS = [
    DecodeOptions(max_new_tokens=NEW_TOKENS),
    DecodeOptions(max_new_tokens=NEW_TOKENS, temperature=0.8, seed=7),
]


@pytest.fixture(scope="module")
def tp_reports() -> list[tuple]:
    """The progress reports of the `tp_runs` session."""
    return []


@pytest.fixture(scope="module")
def tp_runs(tp_reports):
    """One 2-rank session decoding the prompts greedily and sampled (launching ranks is the slow part)."""
    return run_tensor_parallel(
        SOURCE,
        PROMPTS,
        2,
        JOBS,
        timeout_s=60,
        progress=lambda *report: tp_reports.append(report),
        warmup=True,  # as on a GPU: untimed warm-up decodes before each job
    )


def test_rank_0_reports_every_job_s_prompts_in_one_count_after_each_warm_up(tp_runs, tp_reports):
    total = len(JOBS) * len(PROMPTS)
    assert len(tp_runs) == len(JOBS)
    timed = [r for r in tp_reports if r[0] == TIMED]
    assert timed[0] == (TIMED, 0, total) and timed[-1] == (TIMED, total, total)
    done = [d for _, d, _ in timed]
    assert done == sorted(done) and set(done) == set(range(total + 1))
    assert {t for _, _, t in timed} == {total}  # only rank 0 reports
    warm = len(warmup_prompts(as_prompts(PROMPTS)))
    assert [r for r in tp_reports if r[0] != TIMED] == len(JOBS) * [
        (WARMUP, d, warm) for d in range(warm + 1)
    ]
    assert all(result.config["warmup_prompts"] == warm >= 1 for result in tp_runs)


def test_two_ranks_decode_exactly_like_single_process_ar(tp_runs):
    model = SOURCE.build("cpu")
    for result, job in zip(tp_runs, JOBS, strict=True):
        reference = run_ar(model, PROMPTS, job, use_graphs=False)
        assert [p.tokens for p in result.prompts] == [p.tokens for p in reference.prompts]
        assert result.config["tp_degree"] == 2 and result.config["method"] == "ar"
        assert all(len(p.cycles) == len(p.tokens) - 1 for p in result.prompts)


def test_killed_rank_is_named_within_the_timeout():
    started = time.monotonic()
    with pytest.raises(DistributedError) as info:
        run_tensor_parallel(
            SOURCE,
            prompt_set(1),
            2,
            [DecodeOptions(max_new_tokens=NEW_TOKENS)],
            timeout_s=10,
            fault=("kill", 1, 2),
        )
    text = str(info.value)
    assert "rank 1 (tp shard 1) died (signal SIGKILL)" in text and "\n" not in text
    assert time.monotonic() - started < 30


def test_run_dir_and_tp_microbenchmarks_go_through_calibrate_and_validate(tmp_path, tp_runs):
    """CPU plumbing end to end: TP run -> run directory; shard + all-reduce microbenchmarks -> a bundle ->
    ``spdsim calibrate`` (ring fit) -> ``spdsim validate`` replays the run."""
    from typer.testing import CliRunner

    from executor.profile import ProfileGrid, build_bundle, hardware_info, profile_phases, write_bundle
    from executor.profile_tp import profile_allreduce, profile_layers_tp
    from executor.rundir import write_run_dir
    from spdsim.cli import app

    prompts = prompt_set(2, seed=11)
    (result,) = run_tensor_parallel(
        SOURCE, prompts, 2, [DecodeOptions(max_new_tokens=NEW_TOKENS)], timeout_s=60
    )
    lengths = {p.prompt_id: p.prompt_tokens for p in result.prompts}
    run_dir = write_run_dir(result, tmp_path / "tp2_ar", {"prompt_tokens": lengths})
    assert json.loads((run_dir / "config.json").read_text())["tp_degree"] == 2

    model = SOURCE.build("cpu")
    kv_lens = (2, 64)
    grid = ProfileGrid((1,), (1,), kv_lens, (1, 2), (), warmup=1, iters=3)
    phases = profile_phases(model, grid, use_graphs=False)
    phases["layers_tp"] = profile_layers_tp(model, (1, 2), kv_lens=kv_lens, warmup=1, iters=3)
    phases["allreduce"] = profile_allreduce(2, 32, query_tokens=(1, 2), dtype="float32", warmup=1, iters=3)
    assert {e["bytes"] for e in phases["allreduce"]} == {32 * 4, 64 * 4}
    bundle = build_bundle(
        model_name="tiny", model=model, phases=phases, hardware=hardware_info("cpu", 1.0), source="test"
    )
    write_bundle(tmp_path / "bundle.json", bundle)

    runner = CliRunner()
    profile = tmp_path / "profile.json"
    calibrated = runner.invoke(app, ["calibrate", str(tmp_path / "bundle.json"), "--out", str(profile)])
    assert calibrated.exit_code == 0, calibrated.output
    assert json.loads(profile.read_text())["allreduce_fit"]["degrees"] == [2]
    validated = runner.invoke(app, ["validate", str(run_dir), "--profile", str(profile)])
    assert validated.exit_code == 0, validated.output
    assert "tpot_ms" in validated.output and "tp2_ar" in validated.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tp", "2"], "--tp: tensor parallelism runs one process per rank, add --distributed"),
        (
            ["--tp", "2", "--distributed", "--method", "spd"],
            "--tp: tensor parallelism runs method ar, got 'spd'",
        ),
    ],
)
def test_cli_tp_mistakes_are_one_line_errors(args, message):
    from typer.testing import CliRunner

    from executor.cli import app

    result = CliRunner().invoke(app, ["run", "--device", "cpu", *args])
    assert result.exit_code == 2 and message in result.output
    assert result.output.strip().count("\n") == 0


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL)")
@pytest.mark.parametrize("use_graphs", [True, False])
def test_nccl_ranks_decode_like_single_gpu_ar(use_graphs):
    """NCCL all_reduces inside captured CUDA graphs (and eager) decode what single-GPU AR decodes (float32)."""
    results = run_tensor_parallel(SOURCE, PROMPTS, 2, JOBS, backend="nccl", use_graphs=use_graphs)
    model = SOURCE.build("cuda")
    for result, job in zip(results, JOBS, strict=True):
        reference = run_ar(model, PROMPTS, job)
        assert [p.tokens for p in result.prompts] == [p.tokens for p in reference.prompts]
        assert result.config["backend"] == "nccl" and result.config["use_graphs"] == use_graphs
