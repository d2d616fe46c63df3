"""The method registry: every configured method is registered, described and knows its GPU count."""

from dataclasses import replace

import pytest
from sim_scenarios import ideal

from spdsim.errors import SpdsimError
from spdsim.methods import METHODS, get_method
from spdsim.scenario.config import METHODS as CONFIG_METHODS


def test_every_config_method_is_registered():
    assert set(METHODS) == set(CONFIG_METHODS)
    for name, method in METHODS.items():
        assert method.name == name and method.description


@pytest.mark.parametrize(
    ("name", "fields", "gpus"),
    [
        ("ar", {}, 1),
        ("ar", {"tensor_parallel": 8}, 8),
        ("eagle3", {"tensor_parallel": 4}, 4),
        ("spd", {"num_stages": 8}, 9),
        ("spd", {"num_stages": 8, "drafter_placement": "stage0"}, 8),
        ("spd", {"stage_layers": (10, 12, 10)}, 4),
        ("spd", {"num_stages": 4, "tensor_parallel": 2}, 9),
        ("ppsd", {"num_stages": 4}, 4),
    ],
)
def test_gpu_counts(name, fields, gpus):
    scenario = ideal(name)
    assert get_method(name).gpus(replace(scenario, method=replace(scenario.method, **fields))) == gpus


def test_unknown_method_names_the_allowed_ones():
    with pytest.raises(SpdsimError, match="unknown 'medusa'.*spd"):
        get_method("medusa")
