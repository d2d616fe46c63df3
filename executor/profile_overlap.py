"""Profile phase ``stream_overlap``: how far g concurrent decode streams overlap on one GPU.

The single-process SPD schedule (``executor/schedules/spd.py``) issues each stage and the drafter as a graph on its
own CUDA stream. A batch-1 decode step leaves the memory bus part idle (an H200 stage step reaches ~55% of the copy
bandwidth), so concurrent streams fill it better than back to back. Measured here, for g = 2 .. max(stage
counts) + 1 (every stream count a one-GPU SPD cycle issues: a <= n stages plus the drafter), with the schedule's
mechanics (fork the streams off the current one, replay one graph per stream, join): the model's layers split into
g disjoint stages, each on its own stream (g graphs, so host launch skew is in the clock as in a run), against the
same g graphs back to back on one stream and against the longest of them alone. With t_i the members,

    concurrent wall = max(t) + c · (Σ t − max t)   =>   c = (wall − longest) / (back to back − longest)

c = 1: back to back (no overlap), 0: perfect overlap. Stored dimensionless as ``colocated_contention`` is: the stat
fields hold 1000·c (``p10``/``p90`` from the concurrent wall's spread), and each entry keeps the three raw times.
On the CPU there are no streams: the "concurrent" issue is the same serial work, so c ≈ 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from executor.cache import KVCache, kv_bucket
from executor.graphs import GraphedStep
from executor.schedules.common import make_streams, stream_context
from executor.stages import uneven_counts
from executor.timing import IntervalRecorder, TimingStats


def overlap_stream_counts(num_layers: int, stage_counts: tuple[int, ...]) -> tuple[int, ...]:
    """g = 2 .. max(stage counts) + 1, at most ``num_layers`` (each stream needs its own layers: concurrent
    streams must not write the same cache slots)."""
    deepest = max((n for n in stage_counts if n <= num_layers), default=1)
    return tuple(range(2, min(deepest + 1, num_layers) + 1))


def overlap_factor(concurrent_us: float, serial_us: float, longest_us: float) -> float:
    """c of ``wall = longest + c·(serial − longest)``, >= 0; 1 where the members cannot overlap (one member)."""
    rest = serial_us - longest_us
    if rest <= 0:
        return 1.0
    return max((concurrent_us - longest_us) / rest, 0.0)


@torch.inference_mode()
def profile_stream_overlap(
    model: Any,
    cache: KVCache,
    kv_len: int,
    stage_counts: tuple[int, ...],
    *,
    warmup: int,
    iters: int,
    use_graphs: bool,
) -> list[dict[str, Any]]:
    """One entry per stream count g (module docstring); q = 1 at ``kv_len`` live positions."""
    window = kv_bucket(kv_len, cache.max_len)
    positions = torch.arange(kv_len - 1, kv_len, device=model.device)
    graphs = use_graphs and model.device.type == "cuda"
    entries = []
    for streams in overlap_stream_counts(model.cfg.num_layers, stage_counts):
        counts = uneven_counts(model.cfg.num_layers, streams)  # the first member is the longest
        starts = [sum(counts[:i]) for i in range(streams)]
        members: list[Callable[[], Any]] = []
        steps: list[GraphedStep] = []  # alive while timed: a graph reads its static inputs
        for start, count in zip(starts, counts, strict=True):

            def member(h: torch.Tensor, p: torch.Tensor, _s: int = start, _n: int = count) -> torch.Tensor:
                return model.forward_layers(h, p, _s, _s + _n, cache, kv_len=window)[0]

            hidden = torch.randn(1, 1, model.cfg.hidden_size, device=model.device, dtype=model.dtype)
            if graphs:
                # replayed concurrently, one stream each: one capture stream each (GraphedStep)
                steps.append(GraphedStep(member, (hidden, positions), capture_stream=torch.cuda.Stream()))
                members.append(steps[-1].graph.replay)
            else:
                members.append(lambda _m=member, _h=hidden: _m(_h, positions))
        samples = _interleaved_us(model.device, members, make_streams(model.device, streams), warmup, iters)
        wall, serial, alone = (TimingStats.from_samples(s) for s in samples)
        factor = [
            1000.0 * overlap_factor(w, serial.median_us, alone.median_us)
            for w in (wall.median_us, wall.p10_us, wall.p90_us)
        ]
        entries.append(
            {
                "streams": streams,
                "median_us": factor[0],
                "p10_us": factor[1],
                "p90_us": factor[2],
                "samples": wall.samples,
                "layers": counts[0],
                "kv_len": kv_len,
                "concurrent_us": wall.median_us,
                "serial_us": serial.median_us,
                "longest_alone_us": alone.median_us,
            }
        )
    return entries


def _interleaved_us(
    device: torch.device, members: list[Callable[[], Any]], streams: list, warmup: int, iters: int
) -> tuple[list[float], list[float], list[float]]:
    """(concurrent, back to back, longest alone) samples, interleaved per iteration so drift hits all three."""

    def concurrent() -> None:
        current = torch.cuda.current_stream() if device.type == "cuda" else None
        for stream, run in zip(streams, members, strict=True):
            if stream is not None:
                stream.wait_stream(current)
            with stream_context(stream):
                run()
        if current is not None:
            for stream in streams:
                current.wait_stream(stream)

    def serial() -> None:
        for run in members:
            run()

    variants = (concurrent, serial, members[0])
    for _ in range(warmup):
        for fn in variants:
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    recorders = [IntervalRecorder(device) for _ in variants]
    for _ in range(iters):
        for recorder, fn in zip(recorders, variants, strict=True):
            recorder.start()
            fn()
            recorder.stop()
    concurrent_us, serial_us, alone_us = (r.intervals_us() for r in recorders)
    return concurrent_us, serial_us, alone_us
