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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphs_replayed_on_different_streams_are_captured_on_different_streams() -> None:
    """Two large matmul graphs of one cache, run on two streams (as SPD's stages and verify are): each gets its own
    capture stream (so its own cuBLAS workspace), and replayed concurrently many times both stay eager's product
    (a shared split-K workspace would mix their partial sums)."""
    graphs = GraphCache(enabled=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    weights = [torch.randn(32768, 4096, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2)]
    rows = [torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2)]
    fns = [lambda x, _w=w: x @ _w.T for w in weights]
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    expected = [rows[i] @ weights[i].T for i in range(2)]
    for stream in streams:  # the inputs were made on the current stream
        stream.wait_stream(torch.cuda.current_stream())
    outputs = []
    for _ in range(200):
        outputs = []
        for i, stream in enumerate(streams):
            with torch.cuda.stream(stream):
                outputs.append(graphs.run(("mm", i), fns[i], rows[i]))
    torch.cuda.synchronize()
    captured = [graphs._graphs[("mm", i)].capture_stream for i in range(2)]
    assert captured[0] is not None and captured[0] != captured[1]
    for i in range(2):  # values ~ N(0, 64): a mixed-up sum is off by tens
        assert torch.allclose(outputs[i].float(), expected[i].float(), rtol=2**-7, atol=0.5)
