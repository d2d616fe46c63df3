"""`executor.schedules.dispatch`: options reach the schedule every method runs (tiny models, CPU)."""

from __future__ import annotations

import pytest

import executor.graphs
from executor.models import load_fast_model
from executor.schedules import run_method


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
