"""Scenario validation: the first bad field, named with its allowed values, as one SpdsimError line.

Run at the boundary (scenario files, CLI overrides, profiles and traces named by a scenario); the engine and the
methods assume a valid Scenario and carry no defensive checks of their own.
"""

from __future__ import annotations

import math
from dataclasses import fields

from spdsim.contract.profile_schema import load_profile
from spdsim.contract.shape import uneven_counts
from spdsim.errors import SpdsimError
from spdsim.scenario.config import (
    ACCEPTANCE_KINDS,
    DRAFTER_PLACEMENTS,
    LATENCY_KINDS,
    METHODS,
    PIPELINE_METHODS,
    STAGE_PLACEMENTS,
    VERIFY_PLACEMENTS,
    AcceptanceSpec,
    LatencySpec,
    MethodSpec,
    ModelShape,
    Scenario,
)
from spdsim.scenario.topology import COLLECTIVES


def check(ok: bool, message: str) -> None:
    if not ok:
        raise SpdsimError(message)


def _finite_nonneg(value: float, where: str) -> None:
    check(math.isfinite(value) and value >= 0, f"{where}: must be a finite number >= 0 (got {value})")


def _unit_interval(value: float, where: str) -> None:
    check(math.isfinite(value) and 0.0 <= value <= 1.0, f"{where}: must be in [0, 1] (got {value})")


def _validate_method(method: MethodSpec, model: ModelShape | None) -> None:
    check(
        method.name in METHODS, f"method.name: unknown method '{method.name}' (allowed: {', '.join(METHODS)})"
    )
    check(method.num_stages >= 1, f"method.num_stages: must be >= 1 (got {method.num_stages})")
    for name in ("draft_tokens", "tensor_parallel", "k_min", "spec_layers", "draft_layers"):
        value = getattr(method, name)
        floor = 0 if name == "spec_layers" else 1
        check(value >= floor, f"method.{name}: must be >= {floor} (got {value})")
    check(method.k_max >= method.k_min, f"method.k_max: must be >= method.k_min = {method.k_min}")
    _unit_interval(method.stop_threshold, "method.stop_threshold")
    _unit_interval(method.draft_model_layers_fraction, "method.draft_model_layers_fraction")
    check(
        method.drafter_placement in DRAFTER_PLACEMENTS,
        f"method.drafter_placement: unknown placement '{method.drafter_placement}' "
        f"(allowed: {', '.join(DRAFTER_PLACEMENTS)})",
    )
    check(
        method.verify_placement in VERIFY_PLACEMENTS,
        f"method.verify_placement: unknown placement '{method.verify_placement}' "
        f"(allowed: {', '.join(VERIFY_PLACEMENTS)})",
    )
    check(
        method.stage_placement in STAGE_PLACEMENTS,
        f"method.stage_placement: unknown placement '{method.stage_placement}' "
        f"(allowed: {', '.join(STAGE_PLACEMENTS)})",
    )
    check(method.exit_layer >= 0, f"method.exit_layer: must be >= 0 (got {method.exit_layer})")
    if method.name not in PIPELINE_METHODS:
        return
    n = method.num_stages
    layers = model.num_layers if model is not None else None
    if method.stage_layers:
        check(
            len(method.stage_layers) == n,
            f"method.stage_layers: has {len(method.stage_layers)} entries; method.num_stages is {n}",
        )
        check(all(v >= 1 for v in method.stage_layers), "method.stage_layers: every stage needs >= 1 layer")
        if layers is not None:
            check(
                sum(method.stage_layers) == layers,
                f"method.stage_layers: sums to {sum(method.stage_layers)}; must sum to model.num_layers = {layers}",
            )
    elif layers is not None:
        check(n <= layers, f"method.num_stages: {n} exceeds model.num_layers = {layers}")
        check(
            layers % n == 0,
            f"method.num_stages: {n} does not divide model.num_layers = {layers}; give method.stage_layers "
            f"({n} layer counts summing to {layers}, e.g. --set "
            f"method.stage_layers=[{','.join(map(str, uneven_counts(layers, n)))}])",
        )


def _validate_acceptance(acc: AcceptanceSpec) -> None:
    check(
        acc.kind in ACCEPTANCE_KINDS and acc.kind != "preset",
        f"acceptance.kind: unknown kind '{acc.kind}' (allowed: {', '.join(k for k in ACCEPTANCE_KINDS)})",
    )
    for name in ("alpha", "alpha_saturated", "alpha_refill", "inner_alpha"):
        _unit_interval(getattr(acc, name), f"acceptance.{name}")
    _finite_nonneg(acc.head_noise, "acceptance.head_noise")
    for i, rate in enumerate(acc.rates):
        _unit_interval(rate, f"acceptance.rates[{i}]")
    check(
        all(a >= b for a, b in zip(acc.rates, acc.rates[1:], strict=False)),
        "acceptance.rates: unconditional per-position rates r_k must be non-increasing",
    )
    if acc.kind == "positional":
        check(bool(acc.rates), "acceptance.rates: kind 'positional' needs at least one rate")
    if acc.kind == "trace":
        validate_trace_file(acc.trace_path)


def validate_trace_file(path: str) -> None:
    """Check an acceptance trace (CSV/Parquet) against the trace contract before any run starts."""
    check(bool(path), "acceptance.trace_path: kind 'trace' needs a CSV or Parquet file")
    from spdsim.scenario.acceptance import load_trace  # deferred: pandas only when a trace is used

    load_trace(path)


def _validate_latency(lat: LatencySpec, scenario: Scenario) -> None:
    check(
        lat.kind in LATENCY_KINDS,
        f"latency.kind: unknown kind '{lat.kind}' (allowed: {', '.join(LATENCY_KINDS)})",
    )
    for f in fields(lat):
        if f.name.endswith("_ns"):
            value = getattr(lat, f.name)
            check(value >= 0, f"latency.{f.name}: must be >= 0 ns (got {value})")
    if lat.kind == "constant":
        check(
            lat.layer_ns > 0,
            f"latency.layer_ns: kind 'constant' needs a positive per-layer time (got {lat.layer_ns})",
        )
    if lat.kind == "roofline":
        check(
            scenario.model is not None,
            "model: latency.kind 'roofline' needs a model shape (see `spdsim list`)",
        )
        check(scenario.hardware is not None, "hardware: latency.kind 'roofline' needs a hardware profile")
    if lat.kind in ("measured", "fitted"):
        check(bool(lat.profile_path), f"latency.profile_path: kind '{lat.kind}' needs a profile bundle JSON")
        load_profile(lat.profile_path)


def _validate_experts(model: ModelShape) -> None:
    if model.num_experts == 0:
        return
    check(
        1 <= model.experts_per_token <= model.num_experts,
        f"model.experts_per_token: must be in 1..model.num_experts = {model.num_experts} "
        f"(got {model.experts_per_token})",
    )
    check(
        model.expert_intermediate_size >= 1,
        f"model.expert_intermediate_size: must be >= 1 for a mixture of experts (got {model.expert_intermediate_size})",
    )


def _validate_one_gpu(scenario: Scenario) -> None:
    """``one-gpu`` prices the executor's single-process SPD: one request, the drafter beside the stages, no TP."""
    method = scenario.method
    if method.stage_placement != "one-gpu":
        return
    where = "method.stage_placement: one-gpu"
    check(
        method.name in PIPELINE_METHODS,
        f"{where} applies to {' and '.join(PIPELINE_METHODS)}, not {method.name}",
    )
    check(method.drafter_placement == "stage0", f"{where} needs method.drafter_placement = stage0 (one GPU)")
    check(
        method.tensor_parallel == 1 and not method.rank_nodes,
        f"{where} excludes tensor_parallel and rank_nodes",
    )
    check(scenario.workload.max_batch <= 1, f"{where} prices one request at a time (workload.max_batch = 1)")
    check(scenario.overheads.jitter_cv == 0, f"{where} is deterministic (overheads.jitter_cv = 0)")


def validate_scenario(scenario: Scenario) -> Scenario:
    """Raise SpdsimError naming the first bad field and its allowed values; return the scenario unchanged."""
    _validate_method(scenario.method, scenario.model)
    _validate_acceptance(scenario.acceptance)
    _validate_latency(scenario.latency, scenario)
    _validate_one_gpu(scenario)
    over = scenario.overheads
    for f in fields(over):
        value = getattr(over, f.name)
        _finite_nonneg(value, f"overheads.{f.name}")
    check(
        over.drafter_contention >= 1.0,
        f"overheads.drafter_contention: must be >= 1 (got {over.drafter_contention})",
    )
    if scenario.model is not None:
        for f in fields(scenario.model):
            value = getattr(scenario.model, f.name)
            if isinstance(value, int) and not isinstance(value, bool):
                lowest = (
                    0 if f.default == 0 and type(f.default) is int else 1
                )  # a default of 0 means "absent"
                check(value >= lowest, f"model.{f.name}: must be >= {lowest} (got {value})")
        _validate_experts(scenario.model)
    if scenario.hardware is not None:
        hw = scenario.hardware
        for f in fields(hw):
            value = getattr(hw, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                _finite_nonneg(value, f"hardware.{f.name}")
        check(hw.mem_bandwidth_gbps > 0, "hardware.mem_bandwidth_gbps: must be > 0")
        check(hw.peak_tflops > 0, "hardware.peak_tflops: must be > 0")
        check(0 < hw.bandwidth_efficiency <= 1, "hardware.bandwidth_efficiency: must be in (0, 1]")
        check(0 < hw.flops_efficiency <= 1, "hardware.flops_efficiency: must be in (0, 1]")
        check(
            hw.collective in COLLECTIVES,
            f"hardware.collective: unknown '{hw.collective}' (allowed: {', '.join(COLLECTIVES)})",
        )
    check(scenario.method.aggregation_types >= 0, "method.aggregation_types: must be >= 0")
    check(all(n >= 0 for n in scenario.method.rank_nodes), "method.rank_nodes: nodes must be >= 0")
    work = scenario.workload
    check(work.new_tokens >= 1, f"workload.new_tokens: must be >= 1 (got {work.new_tokens})")
    check(work.num_requests >= 1, f"workload.num_requests: must be >= 1 (got {work.num_requests})")
    check(work.prompt_tokens >= 0, f"workload.prompt_tokens: must be >= 0 (got {work.prompt_tokens})")
    return scenario
