"""spdsim.formulas: the closed forms' limits and inverses."""

from __future__ import annotations

import pytest

from spdsim import formulas


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
