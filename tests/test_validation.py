"""validate_scenario: the first bad field is named, with its allowed values, in one SpdsimError line."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sim_scenarios import roofline

from spdsim.errors import SpdsimError
from spdsim.scenario.checks import validate_scenario
from spdsim.scenario.config import AcceptanceSpec, LatencySpec, MethodSpec, Overheads


def spd(**method_fields):
    return roofline("spd", **method_fields)


def test_a_valid_scenario_comes_back_unchanged():
    scenario = spd(num_stages=8)
    assert validate_scenario(scenario) is scenario


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: replace(s, method=replace(s.method, name="medusa")),
            r"method\.name: unknown method 'medusa'",
        ),
        (lambda s: replace(s, method=replace(s.method, num_stages=0)), r"method\.num_stages: must be >= 1"),
        (lambda s: replace(s, method=replace(s.method, num_stages=5)), r"does not divide model\.num_layers"),
        (
            lambda s: replace(s, method=replace(s.method, num_stages=2, stage_layers=(10, 10))),
            r"method\.stage_layers: sums to 20",
        ),
        (
            lambda s: replace(s, acceptance=AcceptanceSpec(alpha=1.5)),
            r"acceptance\.alpha: must be in \[0, 1\]",
        ),
        (
            lambda s: replace(s, acceptance=AcceptanceSpec(alpha=float("nan"))),
            r"acceptance\.alpha: must be in \[0, 1\]",
        ),
        (
            lambda s: replace(s, overheads=Overheads(control_ns=-1)),
            r"overheads\.control_ns: must be a finite",
        ),
        (
            lambda s: replace(s, latency=LatencySpec(kind="constant", layer_ns=-5)),
            r"latency\.layer_ns: must be >= 0 ns",
        ),
        (lambda s: replace(s, latency=LatencySpec(kind="oracle")), r"latency\.kind: unknown kind 'oracle'"),
        (
            lambda s: replace(s, acceptance=AcceptanceSpec(kind="positional", rates=(0.5, 0.7))),
            r"must be non-increasing",
        ),
    ],
)
def test_bad_fields_are_named(change, message):
    with pytest.raises(SpdsimError, match=message) as caught:
        validate_scenario(change(spd(num_stages=8)))
    assert "\n" not in str(caught.value)


def test_an_explicit_split_lifts_the_divisibility_rule():
    layers = spd().model.num_layers
    split = (layers // 5 + layers % 5,) + (layers // 5,) * 4
    validate_scenario(spd(num_stages=5, stage_layers=split))


def test_non_pipeline_methods_ignore_the_stage_count():
    validate_scenario(replace(roofline("eagle3"), method=MethodSpec(name="eagle3", num_stages=7)))
