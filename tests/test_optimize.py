"""Design search: optima known analytically, balanced splits, the α fit, and the CLI boundary."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from spdsim.cli import app
from spdsim.drivers.optimize import (
    Design,
    SearchSpace,
    balanced_split,
    enumerate_designs,
    fit_alpha,
    search,
    stage_member_ns,
)
from spdsim.engine.closed_form import spd_speedup
from spdsim.errors import SpdsimError
from spdsim.latency.build import build_latency_model
from spdsim.scenario.config import (
    AcceptanceSpec,
    LatencySpec,
    MethodSpec,
    ModelShape,
    Overheads,
    Scenario,
    Workload,
)
from spdsim.scenario.presets import load_presets

SHAPE = ModelShape("toy-32l", 32, 256, 4, 2, 64, 512, 1000)
LAYER_NS = 100_000


def constant_scenario(alpha: float, pdm_ns: int, *, new_tokens: int = 2000, **overheads) -> Scenario:
    """Zero-overhead constant latencies: a layer costs 100 us, embedding and head are free; T_AR = 3.2 ms."""
    return Scenario(
        method=MethodSpec(name="spd", num_stages=8, spec_layers=1),
        model=SHAPE,
        latency=LatencySpec(kind="constant", layer_ns=LAYER_NS, pdm_ns=pdm_ns),
        acceptance=AcceptanceSpec(kind="iid", alpha=alpha, alpha_saturated=alpha, alpha_refill=alpha),
        overheads=Overheads(**overheads),
        workload=Workload(prompt_tokens=16, new_tokens=new_tokens, num_requests=2),
        seed=7,
    )


def test_perfect_acceptance_makes_the_deepest_pipeline_best():
    """α = 1, zero overheads, PDM no longer than the shortest stage: every cycle commits a token, the cycle
    is the slowest stage ceil(32/n)·t, so tokens/s ∝ 1/ceil(32/n) and the largest allowed n (16) wins with
    speedup 16·N/(N + 15) (N tokens per request, n-1 fill cycles)."""
    base = constant_scenario(1.0, pdm_ns=LAYER_NS)
    space = SearchSpace(stages=tuple(range(2, 17)), spec_layers=(1,), placements=("own-gpu",))
    result = search(base, space, finalists=3)
    best = result.best
    assert best.design.num_stages == 16
    assert best.design.split == "even"
    expected = 16 * 2000 / (2000 + 15)
    assert best.closed_form_speedup == pytest.approx(expected, rel=1e-9)
    assert best.simulated_speedup == pytest.approx(expected, rel=1e-9)  # α = 1: no sampling noise
    assert (
        result.finalist_rows()[1]["margin"] > 0.1
    )  # the runner-up (n = 11..15: 3-layer stages) is far behind


def test_a_drafter_longer_than_a_stage_makes_n_equal_4_optimal():
    """L = 32 layers of t = 100 us, PDM P = 800 us on its own GPU, α = 0.8, zero overheads.

    The cycle is max(slowest stage, P) and S(n) = ρ(n) · T_AR / cycle with ρ(n) = 1 / (1 + (n-1)(1-α)):
    * n ≤ 4: the stages are the bottleneck (ceil(32/n)·t ≥ P): S(2) = 2ρ(2) = 1.67, S(3) = ρ(3)·3200/1100 = 2.08,
      S(4) = 4ρ(4) = 2.50 (stage = P exactly);
    * n ≥ 5: the PDM is (stages of at most 7 layers = 700 us < P): S(n) = 4ρ(n), falling with n: S(5) = 2.22.
    So n* = L·t / P = 4, with the runner-up (n = 5) 11% behind.
    """
    base = constant_scenario(0.8, pdm_ns=8 * LAYER_NS, new_tokens=4000)
    space = SearchSpace(stages=tuple(range(2, 17)), spec_layers=(1,), placements=("own-gpu",))
    result = search(base, space, finalists=4)
    best = result.best
    assert (best.design.num_stages, best.design.split) == (4, "even")
    assert best.closed_form_speedup == pytest.approx(spd_speedup(0.8, 4), rel=2e-3)  # fill cycles: 3 per 4000
    assert best.simulated_speedup == pytest.approx(2.5, rel=0.03)  # sampled acceptance
    by_n = {c.design.num_stages: c.closed_form_speedup for c in result.candidates}
    assert by_n[3] == pytest.approx(3200 / 1100 / (1 + 2 * 0.2), rel=2e-3)
    assert by_n[5] == pytest.approx(4 / (1 + 4 * 0.2), rel=2e-3)
    assert max(by_n, key=by_n.get) == 4


def test_balanced_split_moves_layers_off_a_stage_sharing_its_gpu_with_the_drafter():
    """Drafter on stage 0 (PDM 200 us): the even split 8/8/8/8 makes stage 0 cost 1000 us; the min-max split
    holds 900 us (stage 0 gets 7 layers: 700 + 200; the others 9/8/8), and that is optimal: 32 layers at
    <= 800 us on stages 1-3 leave 8 for stage 0 (1000 us), so a bound below 900 is infeasible."""
    base = constant_scenario(0.8, pdm_ns=2 * LAYER_NS)
    latency = build_latency_model(base)
    design = Design(4, 1, "balanced", "stage0")
    counts = balanced_split(base, latency, design)
    assert sum(counts) == 32
    costs = [stage_member_ns(base, latency, design, s, layers) for s, layers in enumerate(counts)]
    assert max(costs) == 900_000
    assert counts[0] == min(counts)
    designs = enumerate_designs(base, SearchSpace(stages=(4,), spec_layers=(1,), placements=("stage0",)))
    assert [d.split for d in designs] == ["even", "balanced"]
    result = search(base, SearchSpace(stages=(4,), spec_layers=(1,), placements=("stage0",)), finalists=2)
    cycles = {c.design.split: c.cycle_us for c in result.candidates}
    assert cycles["balanced"] < cycles["even"]
    assert result.best.design.split == "balanced"


def test_gpu_budget_and_reference_design():
    base = constant_scenario(0.9, pdm_ns=LAYER_NS)
    space = SearchSpace(stages=(2, 4, 8), spec_layers=(1,), max_gpus=8)
    designs = enumerate_designs(base, space)
    assert all(not (d.num_stages == 8 and d.drafter_placement == "own-gpu") for d in designs)  # 9 GPUs
    result = search(base, space, finalists=2, reference=Design(8, 1, "even", "own-gpu"))
    assert result.reference is not None and result.reference.gpus == 9
    assert all(c.gpus <= 8 for c in result.finalists)


def test_alpha_fit_reproduces_the_spd_presets():
    presets = load_presets()
    fit = fit_alpha("qwen3.5-4b/overall/spd-n8-l3", presets)
    for n, spec_layers in ((4, 4), (8, 4), (8, 3), (8, 2), (16, 2)):
        published = presets[f"qwen3.5-4b/overall/spd-n{n}-l{spec_layers}"].acceptance["alpha"]
        assert fit.alpha(n, spec_layers) == pytest.approx(published, abs=0.01)
    assert fit.per_doubling < 0 < fit.per_spec_layer  # deeper pipelines accept less, deeper drafters more
    with pytest.raises(SpdsimError, match="not an SPD preset"):
        fit_alpha("qwen3.5-4b/overall/eagle3-k3", presets)


def test_cli_optimize_table_and_bad_input(tmp_path):
    runner = CliRunner()
    out = tmp_path / "finalists.csv"
    args = ["optimize", "--stages", "2,4", "--spec-layers", "1", "--finalists", "2", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "best: n" in result.output and "ref" in result.output
    lines = out.read_text().splitlines()
    assert lines[0].startswith("rank,design,num_stages") and len(lines) == 3
    for bad, message in (
        (["--max-gpus", "1"], "--max-gpus"),
        (["--stages", "0:4"], "--stages"),
        (["--alpha-model", "magic"], "--alpha-model"),
        (["--finalists", "0"], "--finalists"),
    ):
        result = runner.invoke(app, ["optimize", *bad])
        assert result.exit_code == 2
        assert message in result.output and "Traceback" not in result.output
