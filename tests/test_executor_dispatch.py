"""`executor.schedules.dispatch`: options reach the schedule every method runs (tiny models, CPU)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import executor.graphs
from executor.models import load_fast_model
from executor.schedules import run_method
from executor.schedules.base import TIMED, WARMUP, warms_up


@pytest.mark.parametrize(
    ("method", "extra"),
    [("ar", {}), ("spd", {"stages": 2}), ("eagle3", {"k": 2}), ("draft-model", {"k": 2})],
)
@pytest.mark.parametrize("use_graphs", [False, True])
def test_use_graphs_reaches_every_graph_cache_of_every_method(monkeypatch, method, extra, use_graphs):
    """`--no-graphs` used to reach AR only: SPD and the chains captured graphs anyway (and so did the synthetic
    reference), so a run asked to be eager was not."""
    asked: list[bool] = []
    init = executor.graphs.GraphCache.__init__

    def recording_init(self, enabled: bool = True, *args, **kwargs) -> None:
        asked.append(enabled)
        init(self, enabled, *args, **kwargs)

    monkeypatch.setattr(executor.graphs.GraphCache, "__init__", recording_init)
    model, _ = load_fast_model("random:tiny-qwen3", max_seq_len=256)
    if method == "draft-model":
        extra = {**extra, "draft_model": load_fast_model("random:tiny-llama", max_seq_len=256)[0]}
    prompts = [("p", list(range(3, 20)))]
    run_method(method, model, prompts, max_new_tokens=6, synthetic_alpha=0.8, use_graphs=use_graphs, **extra)
    assert asked and set(asked) == {use_graphs}, asked


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("ar", {}),
        ("spd", {"stages": 2}),
        ("eagle3", {"k": 2}),
        ("eagle3", {"k": 2, "temperature": 1.0}),  # the eager T > 0 chain loop
        ("draft-model", {"k": 2}),
    ],
)
def test_progress_hears_every_warm_up_and_timed_prompt_between_prompts(monkeypatch, method, extra):
    """Lengths 5, 300 and 9 start in windows 256, 512, 256: two warm-up prompts, labelled so, then the three
    timed ones, each reported once after it ends. Each report moves the host clock 1000 s: one inside a prompt's
    timed region (a callback in a decode loop) would show in its commit times."""
    skipped = [0.0]
    real_clock = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + skipped[0])
    heard: list[tuple[str, int, int]] = []

    def report(phase: str, done: int, total: int) -> None:
        heard.append((phase, done, total))
        skipped[0] += 1000.0

    model, _ = load_fast_model("random:tiny-qwen3", max_seq_len=512)
    if method == "draft-model":
        extra = {**extra, "draft_model": load_fast_model("random:tiny-llama", max_seq_len=512)[0]}
    rng = np.random.default_rng(4)
    spread = [(f"p{length}", rng.integers(0, 256, length).tolist()) for length in (5, 300, 9)]
    result = run_method(method, model, spread, max_new_tokens=6, warmup=True, progress=report, **extra)
    assert result.config["warmup_prompts"] == 2
    assert heard == [(WARMUP, done, 2) for done in range(3)] + [(TIMED, done, 3) for done in range(4)]
    # each prompt's timed region: from its first commit (the prefill's end) to its last
    assert max(run.token_times_us[-1] - run.token_times_us[0] for run in result.prompts) < 1000.0 * 1e6


def test_without_progress_a_run_reports_nothing(capfd):
    model, _ = load_fast_model("random:tiny-qwen3", max_seq_len=256)
    run_method("spd", model, [("p", list(range(3, 20)))], max_new_tokens=4, stages=2, warmup=True)
    assert capfd.readouterr() == ("", "")


def test_every_schedule_warms_up_by_default_on_cuda_only_unless_asked():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # device objects only: no GPU needed
    assert warms_up(None, cuda) and not warms_up(None, cpu)
    assert warms_up(True, cpu) and not warms_up(False, cuda)
