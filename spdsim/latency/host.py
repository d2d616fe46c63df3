"""The host-overhead regime: per-layer launch + Python cost and per-call cost on top of a device latency model.

An eager HF-style executor issues every kernel of a decoder layer from Python; the GPU runs them asynchronously,
so a layer takes max(device time, host time) and a module call (a stage forward, a PDM forward, a draft pass)
adds a fixed host cost on top. A graph-captured, compiled executor replays one graph per call: host time per layer
~0, one launch per call. Both are settings of the same two numbers (``hardware.host_layer_ns``,
``hardware.host_call_ns``); with both zero the device model is used unchanged.

    T(layers) = max(T_device(layers), layers · host_layer) + host_call

The final norm + lm_head + verify is priced on the device only (the SPD repository captures it in a CUDA graph).
``fit_host_costs`` recovers (host_layer, host_call) from measured forwards of several layer counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spdsim.latency.model import KvLen, LatencyModel


class HostBoundLatency(LatencyModel):
    """A latency model with the host regime of ``hardware.host_layer_ns`` / ``host_call_ns`` over ``inner``."""

    def __init__(self, inner: LatencyModel, host_layer_ns: int, host_call_ns: int):
        super().__init__(inner.shape, inner.hardware, inner.spec, inner.draft_vocab_size)
        self.inner = inner
        self.host_layer_ns = int(host_layer_ns)
        self.host_call_ns = int(host_call_ns)

    def _host(self, device: Any, layers: int) -> Any:
        bound = np.maximum(device, layers * self.host_layer_ns) + self.host_call_ns
        return bound if isinstance(bound, np.ndarray) else int(bound)

    def embed_ns(self, query_tokens: int = 1) -> int:
        return self.inner.embed_ns(query_tokens)

    def layers_ns(self, layers: int, query_tokens: int, kv_len: KvLen, tp: int = 1) -> Any:
        return self._host(self.inner.layers_ns(layers, query_tokens, kv_len, tp), layers)

    def head_ns(self, query_tokens: int = 1) -> int:
        return self.inner.head_ns(query_tokens)

    def lm_head_ns(self, query_tokens: int = 1, vocab: int | None = 0) -> int:
        return self.inner.lm_head_ns(query_tokens, vocab)

    def pdm_ns(self, spec_layers: int, query_tokens: int, kv_len: KvLen) -> Any:
        return self._host(self.inner.pdm_ns(spec_layers, query_tokens, kv_len), spec_layers)

    def chain_draft_ns(self, draft_layers: int, kv_len: KvLen, vocab: int | None = None) -> Any:
        return self._host(self.inner.chain_draft_ns(draft_layers, kv_len, vocab), draft_layers)

    def draft_model_ns(self, layers: int, query_tokens: int, kv_len: KvLen) -> Any:
        return self._host(self.inner.draft_model_ns(layers, query_tokens, kv_len), layers)

    def little_model_ns(self, layers: int, query_tokens: int, kv_len: KvLen) -> Any:
        return self._host(self.inner.little_model_ns(layers, query_tokens, kv_len), layers)

    def parallel_draft_ns(
        self, draft_layers: int, query_tokens: int, kv_len: KvLen, vocab: int | None = None
    ) -> Any:
        return self._host(
            self.inner.parallel_draft_ns(draft_layers, query_tokens, kv_len, vocab), draft_layers
        )

    def p2p_ns(self, num_bytes: int) -> int:
        return self.inner.p2p_ns(num_bytes)

    def allreduce_ns(self, num_bytes: int, tp: int) -> int:
        return self.inner.allreduce_ns(num_bytes, tp)

    def cycle_fixed_ns(self, num_stages: int) -> int:
        return self.inner.cycle_fixed_ns(num_stages)

    def verify_fixed_ns(self, num_stages: int) -> int:
        return self.inner.verify_fixed_ns(num_stages)

    def chain_fixed_ns(self, draft_tokens: int) -> int:
        return self.inner.chain_fixed_ns(draft_tokens)

    def colocated_contention_ppm(self, num_stages: int) -> int:
        return self.inner.colocated_contention_ppm(num_stages)

    def stream_overlap_ppm(self, streams: int) -> int:
        return self.inner.stream_overlap_ppm(streams)


def with_host_overhead(latency: LatencyModel) -> LatencyModel:
    """``latency`` itself when the hardware has no host costs (exactly today's model), else wrapped."""
    hw = latency.hardware
    if hw is None or (hw.host_layer_ns <= 0 and hw.host_call_ns <= 0):
        return latency
    return HostBoundLatency(latency, hw.host_layer_ns, hw.host_call_ns)


def fit_host_costs(points: list[tuple[int, float, float]]) -> tuple[float, float]:
    """Least-squares (host_layer_ns, host_call_ns) of ``measured = max(device, layers · h) + c`` over points
    (layers, measured_ns, device_ns). The objective is piecewise quadratic in h with breakpoints at
    device / layers; it is minimised exactly on each piece (c is the mean residual for a given h)."""
    if len(points) < 2:
        raise ValueError("fit_host_costs: need at least two (layers, measured, device) points")
    layers = np.array([p[0] for p in points], dtype=np.float64)
    measured = np.array([p[1] for p in points], dtype=np.float64)
    device = np.array([p[2] for p in points], dtype=np.float64)
    breaks = np.unique(np.concatenate([[0.0], device / layers, [measured.max() / layers.min()]]))
    best = (np.inf, 0.0, 0.0)
    for lo, hi in zip(breaks[:-1], breaks[1:], strict=True):
        host_bound = layers * (0.5 * (lo + hi)) > device  # which points are host-bound on this piece
        # residual r_i = measured - c - (layers·h if host-bound else device): linear least squares in (h, c)
        a = np.column_stack([np.where(host_bound, layers, 0.0), np.ones_like(layers)])
        b = measured - np.where(host_bound, 0.0, device)
        (h, c), *_ = np.linalg.lstsq(a, b, rcond=None)
        h = float(np.clip(h, lo, hi))
        c = float(np.mean(measured - np.maximum(device, layers * h)))
        sse = float(np.sum((measured - np.maximum(device, layers * h) - c) ** 2))
        if sse < best[0] - 1e-9:
            best = (sse, h, c)
    return best[1], best[2]
