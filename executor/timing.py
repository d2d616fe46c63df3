"""Device timers: CUDA events on the GPU (host clock after synchronize on the CPU), medians and spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class TimingStats:
    median_us: float
    p10_us: float
    p90_us: float
    samples: int

    @classmethod
    def from_samples(cls, samples_us: list[float]) -> TimingStats:
        ordered = sorted(samples_us)
        return cls(
            median_us=statistics.median(ordered),
            p10_us=_quantile(ordered, 0.10),
            p90_us=_quantile(ordered, 0.90),
            samples=len(ordered),
        )

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _quantile(ordered: list[float], q: float) -> float:
    """Linear-interpolated quantile of sorted data."""
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class IntervalRecorder:
    """Records many start/stop intervals without synchronizing in between; resolve once at the end."""

    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self._pending: list[tuple[object, object]] = []
        self._open: object | None = None

    def start(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._open = event
        else:
            self._open = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._pending.append((self._open, event))
        else:
            self._pending.append((self._open, time.perf_counter()))
        self._open = None

    def intervals_us(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [start.elapsed_time(end) * 1000.0 for start, end in self._pending]
        return [(end - start) * 1e6 for start, end in self._pending]

    def starts_us(self) -> list[float]:
        """Start of every interval in µs from the first interval's start, on the timing clock (CUDA events on a
        GPU, perf_counter on the CPU)."""
        if not self._pending:
            return []
        first = self._pending[0][0]
        if self.cuda:
            torch.cuda.synchronize()
            return [first.elapsed_time(start) * 1000.0 for start, _ in self._pending]
        return [(start - first) * 1e6 for start, _ in self._pending]


def time_callable(
    fn: Callable[[], object], *, device: torch.device | str, warmup: int = 5, iters: int = 50
) -> TimingStats:
    """Median/p10/p90 of ``fn()`` after warm-up, one event pair per call."""
    for _ in range(warmup):
        fn()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    recorder = IntervalRecorder(device)
    for _ in range(iters):
        recorder.start()
        fn()
        recorder.stop()
    return TimingStats.from_samples(recorder.intervals_us())
