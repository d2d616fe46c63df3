"""CUDA-graph capture: replays equal eager runs; on the CPU the cache runs steps eagerly."""

from __future__ import annotations

import pytest
import torch

from executor.graphs import GraphCache


def test_disabled_cache_runs_eagerly() -> None:
    graphs = GraphCache(enabled=False)
    x = torch.arange(4.0)
    assert torch.equal(graphs.run("double", lambda t: t * 2, x), x * 2)
    assert len(graphs) == 0
    assert graphs.seen == {"double"}  # keys are recorded even when nothing is captured


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_replay_reads_new_inputs_and_updates_state() -> None:
    graphs = GraphCache(enabled=True)
    state = torch.zeros(3, device="cuda")

    def step(x: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        state.index_copy_(0, index, x[:1])
        return {"sum": x.sum() + state.sum()}

    out = None
    for i in range(3):
        x = torch.full((5,), float(i + 1), device="cuda")
        out = graphs.run("step", step, x, torch.tensor([i], device="cuda"))
    assert len(graphs) == 1
    assert state.tolist() == [1.0, 2.0, 3.0]
    assert float(out["sum"]) == 15.0 + 6.0
