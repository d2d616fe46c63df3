"""Integer-nanosecond time: the simulator never keeps float time, so runs are exact and reproducible.

Floats appear only at the edges (µs in CSVs, ms and s in reports), converted with the helpers below.
"""

from __future__ import annotations

NS_PER_US = 1_000
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


def ns(value: float) -> int:
    """Round a (possibly float) nanosecond quantity to the integer clock, half away from zero."""
    return int(value + 0.5) if value >= 0 else -int(-value + 0.5)


def us_to_ns(time_us: float) -> int:
    return ns(time_us * NS_PER_US)


def ms_to_ns(time_ms: float) -> int:
    return ns(time_ms * NS_PER_MS)


def s_to_ns(time_s: float) -> int:
    return ns(time_s * NS_PER_S)


def ns_to_us(time_ns: int) -> float:
    return time_ns / NS_PER_US


def ns_to_ms(time_ns: int) -> float:
    return time_ns / NS_PER_MS


def ns_to_s(time_ns: int) -> float:
    return time_ns / NS_PER_S


def per_s(count: int | float, duration_ns: int | float) -> float:
    """A rate per second (e.g. tokens/s) from a count over a nanosecond duration; 0 for an empty span."""
    return count * NS_PER_S / duration_ns if duration_ns > 0 else 0.0
