"""Replay measured executor runs in the simulator and report signed errors (docs/metrics.md §2 "strict replay").

For every prompt of a run the simulator gets the same prompt length, the same number of generated tokens and the
run's own accept/reject trace (trace replay), with latencies from a calibrated profile. Reported per run, as
signed % error (predicted − measured) / measured: TPOT, tokens/s, iteration (cycle) time mean / median / p90,
and speedup against an AR run on the same hardware. Runs named in the profile's ``"calibration"`` are reported as
"fitted", all others as "held-out".
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spdsim.calibration.measured_runs import MeasuredRun, PromptMeasure, load_run
from spdsim.contract.profile_schema import load_profile
from spdsim.contract.realised import realised_acceptance, realised_warning
from spdsim.contract.vocabulary import placement_from_executor, stage_placement_of_run
from spdsim.errors import SpdsimError
from spdsim.scenario.config import AcceptanceSpec, LatencySpec, MethodSpec, ModelShape, Scenario, Workload

METRICS = ("tpot_ms", "tokens_per_s", "cycle_mean_us", "cycle_median_us", "cycle_p90_us", "speedup")
SUPPORTED = ("ar", "spd", "eagle3", "draft-model")


@dataclass(frozen=True)
class Comparison:
    run: str
    method: str
    role: str  # "fitted" | "held-out"
    measured: dict[str, float | None]
    predicted: dict[str, float | None]
    warning: str | None = None  # realised acceptance off the nominal one (spdsim.contract.realised)

    def error_pct(self, metric: str) -> float | None:
        measured, predicted = self.measured.get(metric), self.predicted.get(metric)
        if measured is None or predicted is None or measured == 0:
            return None
        return 100.0 * (predicted - measured) / measured

    def row(self) -> dict[str, Any]:
        out: dict[str, Any] = {"run": self.run, "method": self.method, "role": self.role}
        for metric in METRICS:
            out[f"measured_{metric}"] = self.measured.get(metric)
            out[f"predicted_{metric}"] = self.predicted.get(metric)
            out[f"error_pct_{metric}"] = self.error_pct(metric)
        return out


def method_spec(run: MeasuredRun) -> MethodSpec:
    config = run.config
    if run.method not in SUPPORTED:
        raise SpdsimError(
            f"validate: run '{run.path}' has method '{run.method}' (supported: {', '.join(SUPPORTED)})"
        )
    if run.pipeline:
        stage_layers = tuple(config.get("stage_layers") or ())
        return MethodSpec(
            name="spd",
            num_stages=run.num_stages,
            stage_layers=stage_layers,
            spec_layers=int(config.get("spec_layers") or 1),
            drafter_placement=placement_from_executor(config.get("drafter", "")),
            verify_placement=config.get("verify_on", "controller"),
            stage_placement=stage_placement_of_run(config),
        )
    k = int(config.get("k") or 3)
    return MethodSpec(
        name=run.method,
        num_stages=1,
        draft_tokens=k,
        draft_layers=int(config.get("draft_layers") or 1),
        # runs written before the draft vocabulary was recorded drafted over the target's (0)
        draft_vocab_size=int(config.get("draft_vocab_size") or 0),
        tensor_parallel=int(config.get("tp_degree") or 1),
    )


def _check_model(run: MeasuredRun, profile: dict) -> None:
    layers = sum(run.config.get("stage_layers") or []) or None
    if layers is not None and layers != profile["model"]["num_layers"]:
        raise SpdsimError(
            f"validate: run '{run.path}' splits {layers} layers, the profile's model has {profile['model']['num_layers']}"
        )


def scenario_for(
    run: MeasuredRun, prompt: PromptMeasure, profile_path: str, kind: str, trace_path: str
) -> Scenario:
    profile = load_profile(profile_path)
    acceptance = AcceptanceSpec(kind="trace", trace_path=trace_path) if trace_path else AcceptanceSpec()
    return Scenario(
        method=method_spec(run),
        model=ModelShape(**profile["model"]),
        latency=LatencySpec(kind=kind, profile_path=profile_path),
        acceptance=acceptance,
        workload=Workload(
            prompt_tokens=prompt.prompt_tokens, new_tokens=prompt.decode_tokens, num_requests=1
        ),
    )


def replay_latency(scenario: Scenario, profile: dict):
    from spdsim.latency.profiled import FittedLatency, MeasuredLatency

    cls = FittedLatency if scenario.latency.kind == "fitted" else MeasuredLatency
    return cls(scenario.model, scenario.hardware, scenario.latency, profile)


def replay_scenario(run: MeasuredRun, prompt: PromptMeasure, profile: dict) -> Scenario:
    """One prompt of a run as a scenario priced from an in-memory profile (latency kind measured)."""
    return Scenario(
        method=method_spec(run),
        model=ModelShape(**profile["model"]),
        latency=LatencySpec(kind="measured"),
        workload=Workload(
            prompt_tokens=prompt.prompt_tokens, new_tokens=prompt.decode_tokens, num_requests=1
        ),
    )


def modelled_cycles_ns(
    run: MeasuredRun, prompt: PromptMeasure, profile: dict, without_fixed: bool = False
) -> list[int]:
    """The simulator's cost of every iteration of this prompt, following its measured accept/reject sequence
    (the same loop as the engine's schedules, without SimPy). Where the run measured commit gaps instead of cycles
    (``walls_per_commit``), a pipeline's cycles are summed up to each verification, so both series count alike."""
    from spdsim.methods.ar import ar_step_costs
    from spdsim.methods.chain import chain_draft_pass_ns
    from spdsim.methods.common import VerifyTable, serial_overheads_ns
    from spdsim.methods.pipeline import cycle_plan, pipeline_costs

    if without_fixed:
        profile = copy.deepcopy(profile)
        profile["phases"].pop("cycle_fixed", None)
        profile["phases"].pop("verify_fixed", None)
        profile["phases"].pop("chain_fixed", None)
    scenario = replay_scenario(run, prompt, profile)
    latency = replay_latency(scenario, profile)
    new_tokens = prompt.decode_tokens
    if run.method == "ar":
        steps, control, serial = ar_step_costs(scenario, latency)
        return [control + steps[c] + serial for c in range(new_tokens)]
    outcomes = list(prompt.outcomes)
    if run.pipeline:
        costs = pipeline_costs(scenario, latency)
        plan = cycle_plan(tuple(outcomes), costs.num_stages, new_tokens)
        cycles = [costs.cycle_ns[active][committed] for active, committed in plan]
        if not prompt.walls_per_commit:
            return cycles
        gaps, pending = [], 0
        for (active, _), cost in zip(plan, cycles, strict=True):
            pending += cost
            if active == costs.num_stages:  # a verification: it commits one token
                gaps.append(pending)
                pending = 0
        return gaps
    k = scenario.method.draft_tokens
    passes = chain_draft_pass_ns(scenario, latency)
    verify_ns = VerifyTable(scenario, latency)(k + 1)
    control, serial = serial_overheads_ns(scenario, latency, with_verify=True)
    cycles, committed, index = [], 0, 0
    while committed < new_tokens:
        cycles.append(control + k * passes[committed] + verify_ns[committed] + serial)
        accepted = min(outcomes[index % len(outcomes)], k)
        index += 1
        committed += min(accepted + 1, new_tokens - committed)
    return cycles


def _write_prompt_trace(run: MeasuredRun, prompt_id: str, directory: Path) -> str:
    import pandas as pd

    trace = pd.read_csv(run.path / "trace.csv")
    mine = trace[trace["prompt_id"].astype(str) == prompt_id]
    path = directory / f"trace_{len(list(directory.iterdir()))}.csv"
    mine.to_csv(path, index=False)
    return str(path)


def simulate_run(run: MeasuredRun, profile_path: str, kind: str) -> dict[str, float]:
    """Simulated TPOT, tokens/s and iteration-time statistics of a replayed run."""
    from spdsim.engine.run import simulate

    profile = load_profile(profile_path)
    _check_model(run, profile)
    total_ns, tokens, cycles = 0, 0, []
    with tempfile.TemporaryDirectory(prefix="spdsim-validate-") as tmp:
        for prompt in run.prompts:
            if prompt.decode_tokens < 1:
                continue
            trace = _write_prompt_trace(run, prompt.prompt_id, Path(tmp)) if prompt.outcomes else ""
            scenario = scenario_for(run, prompt, profile_path, kind, trace)
            result = simulate(scenario, record_intervals=False)
            total_ns += result.end_ns
            tokens += len(result.tokens)
            cycles += modelled_cycles_ns(run, prompt, profile)
    return _metrics(total_ns / 1e3, tokens, np.asarray(cycles, dtype=np.float64) / 1e3)


def _metrics(decode_us: float, tokens: int, cycle_us: np.ndarray) -> dict[str, float]:
    return {
        "tpot_ms": decode_us / 1e3 / tokens,
        "tokens_per_s": tokens / (decode_us / 1e6),
        "cycle_mean_us": float(cycle_us.mean()),
        "cycle_median_us": float(np.median(cycle_us)),
        "cycle_p90_us": float(np.percentile(cycle_us, 90)),
    }


def measured_metrics(run: MeasuredRun) -> dict[str, float]:
    return _metrics(run.decode_us, run.decode_tokens, run.cycle_us)


def _realised(run: MeasuredRun) -> dict:
    import pandas as pd

    trace = run.path / "trace.csv"
    if not trace.is_file():
        return {"alpha": None, "checked": 0}
    return realised_acceptance(pd.read_csv(trace).to_dict("records"))


def validate(
    run_paths: list[str | Path],
    profile_path: str | Path,
    baseline: str | Path | None = None,
    kind: str = "measured",
) -> list[Comparison]:
    """Compare every run with its replay; speedups need an AR ``baseline`` run on the same prompts."""
    if kind not in ("measured", "fitted"):
        raise SpdsimError(f"--kind: unknown '{kind}' (allowed: measured, fitted)")
    profile = load_profile(profile_path)
    fitted = set((profile.get("calibration") or {}).get("runs") or ())
    base_run = load_run(baseline) if baseline is not None else None
    if base_run is not None and base_run.method != "ar":
        raise SpdsimError(f"--baseline: run '{baseline}' is method '{base_run.method}', not ar")
    base = None
    if base_run is not None:
        base = (measured_metrics(base_run), simulate_run(base_run, str(profile_path), kind))
    comparisons = []
    for path in run_paths:
        run = load_run(path)
        if base_run is not None:
            ours = {p.prompt_id for p in run.prompts}
            theirs = {p.prompt_id for p in base_run.prompts}
            if ours != theirs:
                raise SpdsimError(f"--baseline: run '{path}' and '{baseline}' decoded different prompts")
        measured, predicted = measured_metrics(run), simulate_run(run, str(profile_path), kind)
        if base is not None:
            measured["speedup"] = measured["tokens_per_s"] / base[0]["tokens_per_s"]
            predicted["speedup"] = predicted["tokens_per_s"] / base[1]["tokens_per_s"]
        role = "fitted" if run.name in fitted else "held-out"
        warning = realised_warning(run.config.get("synthetic_alpha"), _realised(run), run.name)
        comparisons.append(Comparison(run.name, run.method, role, measured, predicted, warning))  # type: ignore[arg-type]
    return comparisons
