"""CUDA-graph capture of fixed-shape steps (decode step, stage step, verify, drafter); eager on the CPU.

A captured step reads its inputs from static buffers and writes its outputs into static tensors that the next
replay overwrites: consume (or clone) the outputs before calling again. Capture happens lazily on the first call
with the caller's real inputs, and the warm-up runs execute the step on those same inputs, so a step must be
idempotent for repeated identical inputs (decode steps are: they rewrite the same K/V at the same positions).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch

WARMUP_ITERS = 2


def _map_tensors(value: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(_map_tensors(v, fn) for v in value)
    if isinstance(value, list):
        return [_map_tensors(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


class GraphedStep:
    """``fn(*inputs)`` captured in one CUDA graph; inputs are tensors of fixed shape, outputs any tensor tree."""

    def __init__(
        self,
        fn: Callable[..., Any],
        example_inputs: tuple[torch.Tensor, ...],
        *,
        pool: Any = None,
        warmup_iters: int = WARMUP_ITERS,
        capture_stream: Any = None,
    ) -> None:
        """``capture_stream``: the stream the capture runs on (default: torch's one capture stream, shared by every
        graph). cuBLAS keys its workspace by stream and a graph keeps the workspace address it was captured with,
        so graphs that may replay at the same time on different streams need different capture streams, or their
        matmuls share one workspace (pytorch/pytorch#193402 describes the sharing)."""
        self.fn = fn
        self.static_inputs = tuple(x.clone() for x in example_inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup_iters):
                fn(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.capture_stream = capture_stream
        with torch.cuda.graph(self.graph, pool=pool, stream=capture_stream):
            self.static_outputs = fn(*self.static_inputs)

    def __call__(self, *inputs: torch.Tensor) -> Any:
        for static, value in zip(self.static_inputs, inputs, strict=True):
            if static is not value:
                static.copy_(value)
        self.graph.replay()
        return self.static_outputs


class GraphCache:
    """Lazily captured graphs keyed by shape class (e.g. ``("stage", 2, kv_bucket)``), each in its own memory pool.

    With ``enabled=False`` (or on a non-CUDA device) every call runs ``fn`` eagerly, so the same schedule code runs
    on the CPU in tests.
    """

    def __init__(self, enabled: bool = True, warmup_iters: int = WARMUP_ITERS) -> None:
        self.requested = enabled  # the caller's choice; graphs run only where CUDA is (enabled)
        self.enabled = enabled and torch.cuda.is_available()
        self.warmup_iters = warmup_iters
        self._graphs: dict[Hashable, GraphedStep] = {}
        # A private memory pool per graph: with one shared pool, a graph captured earlier reuses, as scratch on
        # replay, blocks that a later capture gave its static outputs; a schedule that replays graphs out of
        # capture order (chain: draft, verify, draft0, draft, verify) then reads clobbered outputs (seen on the
        # H200 as garbage token ids in the verify's inputs, studies/executor_speed/README.md).
        self._pool = None
        # One capture stream per stream the graphs replay on (GraphedStep: their matmuls' cuBLAS workspaces); the
        # single-process SPD replays stage, draft and verify graphs concurrently, one stream each.
        self._capture_streams: dict[int, Any] = {}
        # Every key run, captured or eager: the shapes a decode has met, so a test on the CPU can check that a
        # warm-up met every shape the timed prompts meet (on a GPU an unmet key is a capture inside the clock).
        self.seen: set[Hashable] = set()

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, key: Hashable, fn: Callable[..., Any], *inputs: torch.Tensor) -> Any:
        """Run ``fn(*inputs)``; ``fn`` must be the same computation every time ``key`` is used."""
        self.seen.add(key)
        if not self.enabled or not inputs[0].is_cuda:
            return fn(*inputs)
        step = self._graphs.get(key)
        if step is None:
            replay_stream = torch.cuda.current_stream().cuda_stream
            if replay_stream not in self._capture_streams:
                self._capture_streams[replay_stream] = torch.cuda.Stream()
            capture = self._capture_streams[replay_stream]
            step = GraphedStep(
                fn, inputs, pool=self._pool, warmup_iters=self.warmup_iters, capture_stream=capture
            )
            self._graphs[key] = step
        return step(*inputs)

    def clone_outputs(self, outputs: Any) -> Any:
        """Detach outputs from the static buffers the next replay will overwrite."""
        return _map_tensors(outputs, lambda t: t.clone()) if self.enabled else outputs
