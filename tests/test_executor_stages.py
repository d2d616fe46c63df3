"""Stage splits: even, explicit lists, and the one-line errors for bad splits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from executor.stages import parse_stage_layers, split_layers, uneven_counts
from spdsim.errors import SpdsimError


def test_even_split_ranges() -> None:
    split = split_layers(36, 4)
    assert split.ranges == ((0, 9), (9, 18), (18, 27), (27, 36))
    assert split.stage_of_layer(17) == 1


def test_explicit_split() -> None:
    split = split_layers(30, layer_counts=(8, 8, 7, 7))
    assert split.ranges[-1] == (23, 30)
    assert split.num_stages == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_stages": 8}, "does not divide 36 layers"),
        ({"num_stages": 0}, "n >= 1"),
        ({"num_stages": 40}, "exceeds"),
        ({"layer_counts": (9, 9, 9)}, "sums to 27"),
        ({"layer_counts": (36, 0)}, ">= 1 layer"),
        ({"num_stages": 3, "layer_counts": (18, 18)}, "2 entries"),
    ],
)
def test_bad_splits_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(SpdsimError, match=message) as info:
        split_layers(36, **kwargs)
    assert "\n" not in str(info.value)


def test_parse_stage_layers() -> None:
    assert parse_stage_layers("8;8;7,7") == (8, 8, 7, 7)
    with pytest.raises(SpdsimError):
        parse_stage_layers("8,x")


@given(st.integers(1, 80), st.integers(1, 16))
def test_uneven_counts_cover_every_layer_once(num_layers: int, num_stages: int) -> None:
    if num_stages > num_layers:
        return
    split = split_layers(num_layers, layer_counts=uneven_counts(num_layers, num_stages))
    assert max(split.layer_counts) - min(split.layer_counts) <= 1
    covered = [layer for start, end in split.ranges for layer in range(start, end)]
    assert covered == list(range(num_layers))
