"""executor/layer_fns.py: the pure layer functions that are compiled and graph-captured."""

from __future__ import annotations

import torch

from executor.layer_fns import compile_options, compiled_step_inputs, step_inputs


def test_compiled_step_inputs_match_the_eager_ones_and_compile_once_for_every_stage_length():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    cos, sin = torch.randn(64, 8), torch.randn(64, 8)
    positions = torch.tensor([40, 41, 42])
    inputs = compiled_step_inputs(backend="eager")
    before = counters["stats"]["unique_graphs"]
    for layers in (36, 18, 9, 5):
        eager_lengths, compiled_lengths = (
            torch.zeros(layers, dtype=torch.long),
            torch.zeros(layers, dtype=torch.long),
        )
        expected = step_inputs(cos, sin, positions, 48, eager_lengths)
        got = inputs(cos, sin, positions, 48, compiled_lengths)
        assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
        assert torch.equal(compiled_lengths, eager_lengths) and int(compiled_lengths.max()) == 43
    assert counters["stats"]["unique_graphs"] - before == 1


def test_compile_options_tune_by_default_and_yield_to_a_mode_or_a_backend():
    tuned = {"options": {"coordinate_descent_tuning": True}}
    assert compile_options(None) == tuned  # the Qwen3 layers' default
    assert compile_options(None, tuned=False) == {"mode": None}  # the hybrid's, until tuning is measured
    assert (
        compile_options("max-autotune")
        == compile_options("max-autotune", tuned=False)
        == {"mode": "max-autotune"}
    )
    backend = object()
    assert compile_options("max-autotune", backend) == {"backend": backend}
