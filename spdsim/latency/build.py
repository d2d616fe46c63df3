"""The latency model a scenario asks for: constant, roofline, or read from a profile bundle (measured, fitted),
each with the host-overhead regime on top."""

from __future__ import annotations

from spdsim.contract.profile_schema import load_profile
from spdsim.errors import SpdsimError
from spdsim.latency.host import with_host_overhead
from spdsim.latency.model import ConstantLatency, LatencyModel, RooflineLatency
from spdsim.latency.profiled import FittedLatency, MeasuredLatency, _profile_shape
from spdsim.scenario.config import Scenario


def build_latency_model(scenario: Scenario) -> LatencyModel:
    """The latency model a scenario asks for (``scenario.latency.kind``)."""
    spec = scenario.latency
    kind = spec.kind
    draft_vocab = scenario.method.draft_vocab_size
    if kind == "constant":
        return with_host_overhead(ConstantLatency(scenario.model, scenario.hardware, spec, draft_vocab))
    if kind == "roofline":
        if scenario.model is None or scenario.hardware is None:
            raise SpdsimError("latency.kind 'roofline' needs scenario.model and scenario.hardware")
        model = RooflineLatency(
            scenario.model, scenario.hardware, spec, draft_vocab, scenario.method.aggregation_types
        )
        return with_host_overhead(model)
    if kind in ("measured", "fitted"):
        if not spec.profile_path:
            raise SpdsimError(f"latency.profile_path: required for latency kind '{kind}'")
        profile = load_profile(spec.profile_path)
        shape = scenario.model if scenario.model is not None else _profile_shape(profile)
        cls = MeasuredLatency if kind == "measured" else FittedLatency
        return with_host_overhead(cls(shape, scenario.hardware, spec, profile, draft_vocab))
    raise SpdsimError(f"latency.kind: unknown '{kind}' (allowed: constant, roofline, measured, fitted)")
