"""spdsim.formulas: the closed forms' limits, and the most even layer split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spdsim import formulas


@given(st.integers(1, 120), st.integers(1, 32))
def test_uneven_counts_is_the_most_even_split_earlier_stages_first(num_layers: int, num_stages: int) -> None:
    counts = formulas.uneven_counts(num_layers, num_stages)
    assert len(counts) == num_stages and sum(counts) == num_layers
    assert max(counts) - min(counts) <= 1 and list(counts) == sorted(counts, reverse=True)
    if num_layers % num_stages == 0:
        assert set(counts) == {num_layers // num_stages}


def test_spd_speedup_limits() -> None:
    assert formulas.spd_speedup(1.0, 16) == 16.0  # every draft accepted: n tokens a cycle
    assert formulas.spd_speedup(0.0, 16) == pytest.approx(
        16 / 16
    )  # nothing accepted: one token per n-stage cycle
    assert formulas.alpha_from_spd_speedup(8, formulas.spd_speedup(0.7, 8)) == pytest.approx(0.7)


def test_chain_acceptance_length_closed_form() -> None:
    assert formulas.chain_acceptance_length(0.0, 5) == 1.0
    assert formulas.chain_acceptance_length(1.0 - 1e-12, 3) == pytest.approx(4.0)
    assert formulas.chain_acceptance_length(0.5, 2) == pytest.approx(1.75)
