"""Integer-nanosecond conversions."""

from spdsim.units import ms_to_ns, ns, ns_to_ms, ns_to_s, ns_to_us, per_s, s_to_ns, us_to_ns


def test_rounding_onto_the_integer_clock():
    assert ns(1.5) == 2 and ns(2.5) == 3 and ns(-1.5) == -2 and ns(7) == 7
    assert isinstance(ns(3.2), int)


def test_conversions_round_trip():
    assert us_to_ns(1.25) == 1_250 and ms_to_ns(5.41) == 5_410_000 and s_to_ns(0.5) == 500_000_000
    assert ns_to_us(1_250) == 1.25 and ns_to_ms(5_410_000) == 5.41 and ns_to_s(500_000_000) == 0.5


def test_rates_per_second():
    assert per_s(100, 2 * 10**9) == 50.0
    assert per_s(5, 0) == 0.0
