"""Latency models: how long each phase of a schedule takes, in integer nanoseconds.

Every method prices its schedule with the same few primitives (embedding, ``layers`` decoder layers over
``query_tokens`` query tokens against ``kv_len`` cached positions, final norm + lm_head, drafters, links), so
the four kinds below are interchangeable:

* ``constant``  — the ``LatencySpec.*_ns`` fields as given (tests, ideal models);
* ``roofline``  — max(bytes / bandwidth, FLOPs / peak) with efficiency factors, from a ModelShape and Hardware;
* ``measured``  — a profile bundle (``spdsim.contract.profile_schema``) interpolated linearly, never extrapolated;
* ``fitted``    — a few coefficients per phase (from the profile's optional ``"fit"`` key, or least squares
  over its tables); extrapolates by design.

The two profile-driven kinds live in ``spdsim.latency.profiled``.

``kv_len`` may be an int or an integer numpy array (methods price a whole request at once); the result then
has the same shape. Results are integer nanoseconds (``int`` or ``int64`` arrays).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from spdsim.contract.shape import full_layer_params, linear_layer_params
from spdsim.errors import SpdsimError
from spdsim.scenario.config import Hardware, LatencySpec, ModelShape

KvLen = int | np.ndarray
PPM = 1_000_000  # dimensionless factors on the integer clock: parts per million


def _to_ns(value: Any) -> Any:
    """Round float nanoseconds onto the integer clock (scalars stay Python ints)."""
    if isinstance(value, np.ndarray):
        return np.rint(value).astype(np.int64)
    return int(math.floor(float(value) + 0.5))


class LatencyModel:
    """Phase latencies of one scenario. Subclasses implement the primitives; the composites live here."""

    def __init__(
        self,
        shape: ModelShape | None,
        hardware: Hardware | None,
        spec: LatencySpec,
        draft_vocab_size: int = 0,
    ):
        self.shape = shape
        self.hardware = hardware
        self.spec = spec
        self.draft_vocab_size = draft_vocab_size  # rows of draft lm_heads (0 = the target's vocabulary)

    # --- primitives (subclasses) -------------------------------------------------------------------------
    def embed_ns(self, query_tokens: int = 1) -> int:
        raise NotImplementedError

    def layers_ns(self, layers: int, query_tokens: int, kv_len: KvLen, tp: int = 1) -> Any:
        """``layers`` consecutive target decoder layers (one stage), tensor-parallel over ``tp`` GPUs."""
        raise NotImplementedError

    def head_ns(self, query_tokens: int = 1) -> int:
        """Final norm + lm_head + greedy verify/sampling of ``query_tokens`` positions."""
        raise NotImplementedError

    def pdm_ns(self, spec_layers: int, query_tokens: int, kv_len: KvLen) -> Any:
        """SPD drafter (PDM): aggregation + ``spec_layers`` full decoder layers + draft lm_head (one row)."""
        raise NotImplementedError

    def chain_draft_ns(self, draft_layers: int, kv_len: KvLen, vocab: int | None = None) -> Any:
        """One serial pass of a head-style chain drafter (EAGLE-3 / MTP): its layers + its lm_head, one token.

        ``vocab``: rows of its lm_head (None: the scenario's draft vocabulary; 0: the target's, as MTP shares it).
        """
        raise NotImplementedError

    def lm_head_ns(self, query_tokens: int = 1, vocab: int | None = 0) -> int:
        """An lm_head over ``vocab`` rows (None: the draft vocabulary, 0: the target's). Only the roofline tells
        vocabularies apart; the other kinds price every head like the target's."""
        return self.head_ns(query_tokens)

    def p2p_ns(self, num_bytes: int) -> int:
        """One point-to-point send of ``num_bytes`` (hidden state between stages)."""
        raise NotImplementedError

    def cycle_fixed_ns(self, num_stages: int) -> int:
        """Measured serial per-cycle cost outside the phases (0 unless a profile says otherwise)."""
        return 0

    def verify_fixed_ns(self, num_stages: int) -> int:
        """Measured serial cost of a pipeline verification cycle beyond ``head`` (0 unless a profile says so)."""
        return 0

    def chain_fixed_ns(self, draft_tokens: int) -> int:
        """Measured serial cost of a chain iteration beyond its K drafter passes and verify (0 unless a profile
        says otherwise)."""
        return 0

    def colocated_contention_ppm(self, num_stages: int) -> int:
        """Contention c of SPD's drafter and stage 0 on one GPU, in parts per million: the pair keeps the GPU
        busy max(a, b) + c·min(a, b). 10^6 (back to back) unless a calibrated profile says otherwise."""
        return PPM

    def stream_overlap_ppm(self, streams: int) -> int:
        """Overlap c of ``streams`` members issued at once on one GPU, each on its own CUDA stream, in parts per
        million: they keep it busy max(t) + c·(Σt − max t). 10^6 (back to back) unless a profile measured it."""
        return PPM

    # --- composites --------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        if self.shape is None:
            raise SpdsimError("scenario.model: a model shape is required to split layers")
        return self.shape.num_layers

    def hidden_bytes(self, query_tokens: int = 1) -> int:
        """Bytes of ``query_tokens`` hidden states (what a stage sends downstream)."""
        if self.shape is None:
            return 0
        return query_tokens * self.shape.hidden_size * self.shape.dtype_bytes

    def allreduce_ns(self, num_bytes: int, tp: int) -> int:
        """Ring all-reduce of ``num_bytes`` over ``tp`` GPUs: latency + 2(tp-1)/tp · bytes / link bandwidth."""
        if tp <= 1:
            return 0
        hw = self.hardware
        if hw is None:
            raise SpdsimError("scenario.hardware: required for tensor parallelism (all-reduce cost)")
        transfer_ns = 0.0
        if hw.p2p_bandwidth_gbps > 0:
            transfer_ns = 2.0 * (tp - 1) / tp * num_bytes / hw.p2p_bandwidth_gbps  # GB/s == B/ns
        return _to_ns(hw.allreduce_latency_ns + transfer_ns)

    def target_ns(self, query_tokens: int, kv_len: KvLen, tp: int = 1) -> Any:
        """One whole target forward: embedding + all layers + head (an AR step, or a verify pass)."""
        return (
            self.embed_ns(query_tokens)
            + self.layers_ns(self.num_layers, query_tokens, kv_len, tp)
            + self.head_ns(query_tokens)
        )

    def batch_layers_ns(self, layers: int, query_tokens: Any, kv_len: Any, tp: int = 1) -> int:
        """``layers`` layers over a batch: sequence i brings ``query_tokens[i]`` query rows against
        ``kv_len[i]`` cached positions. Without a roofline the batch is priced as one sequence of all the query
        rows against all the cached positions (a profile's query coordinate stands in for the batch one)."""
        q = np.asarray(query_tokens, dtype=np.int64)
        kv = np.asarray(kv_len, dtype=np.int64)
        return self.batch_sums_ns(layers, int(q.sum()), len(q), int(kv.sum()), int((q * kv).sum()), tp)

    def batch_sums_ns(
        self, layers: int, rows: int, sequences: int, kv_sum: int, rows_kv_sum: int, tp: int = 1
    ) -> int:
        """``batch_layers_ns`` from the batch's sums: query rows, sequences, cached positions and
        Σ rows_i · kv_i (what the schedules keep per step without building arrays)."""
        return int(self.layers_ns(layers, rows, kv_sum, tp))

    def batch_target_ns(self, query_tokens: Any, kv_len: Any, tp: int = 1) -> int:
        """One target forward over a batch (an AR step of B sequences, or B verifies of K+1 rows)."""
        q = np.asarray(query_tokens, dtype=np.int64)
        kv = np.asarray(kv_len, dtype=np.int64)
        return self.batch_target_sums_ns(int(q.sum()), len(q), int(kv.sum()), int((q * kv).sum()), tp)

    def batch_target_sums_ns(
        self, rows: int, sequences: int, kv_sum: int, rows_kv_sum: int, tp: int = 1
    ) -> int:
        """``batch_target_ns`` from the batch's sums (see ``batch_sums_ns``)."""
        layers = self.batch_sums_ns(self.num_layers, rows, sequences, kv_sum, rows_kv_sum, tp)
        return self.embed_ns(rows) + layers + self.head_ns(rows)

    def draft_model_ns(self, layers: int, query_tokens: int, kv_len: KvLen) -> Any:
        """A separate smaller LM with the target's layer shape and ``layers`` layers (classic draft model)."""
        return self.embed_ns(query_tokens) + self.layers_ns(layers, query_tokens, kv_len) + self.head_ns(1)

    def little_model_ns(self, layers: int, query_tokens: int, kv_len: KvLen) -> Any:
        """The cascade's smallest model (little -> draft -> target)."""
        return self.draft_model_ns(layers, query_tokens, kv_len)

    def parallel_draft_ns(
        self, draft_layers: int, query_tokens: int, kv_len: KvLen, vocab: int | None = None
    ) -> Any:
        """One parallel-drafting pass (DFlash block / P-EAGLE slots) over ``query_tokens`` query rows."""
        return self.layers_ns(draft_layers, query_tokens, kv_len) + self.lm_head_ns(query_tokens, vocab)


class ConstantLatency(LatencyModel):
    """The ``LatencySpec.*_ns`` constants; ``layer_ns`` is per layer, ``per_query_token_ns`` per extra query."""

    def embed_ns(self, query_tokens: int = 1) -> int:
        return self.spec.embed_ns

    def layers_ns(self, layers: int, query_tokens: int, kv_len: KvLen, tp: int = 1) -> Any:
        extra = 0.0
        if query_tokens > 1 and self.spec.per_query_token_ns:
            extra = (query_tokens - 1) * self.spec.per_query_token_ns * layers / self._layers_for_scaling()
        value = _to_ns(layers * self.spec.layer_ns / tp + extra) + self._tp_allreduce(
            layers, query_tokens, tp
        )
        return _broadcast(value, kv_len)

    def head_ns(self, query_tokens: int = 1) -> int:
        return self.spec.head_ns

    def pdm_ns(self, spec_layers: int, query_tokens: int, kv_len: KvLen) -> Any:
        return _broadcast(self.spec.pdm_ns, kv_len)

    def chain_draft_ns(self, draft_layers: int, kv_len: KvLen, vocab: int | None = None) -> Any:
        return _broadcast(self.spec.draft_step_ns, kv_len)

    def draft_model_ns(self, layers: int, query_tokens: int, kv_len: KvLen) -> Any:
        if self.spec.draft_step_ns <= 0:
            return super().draft_model_ns(layers, query_tokens, kv_len)
        extra = (query_tokens - 1) * self.spec.per_query_token_ns * layers / self._layers_for_scaling()
        return _broadcast(_to_ns(self.spec.draft_step_ns + extra), kv_len)

    def little_model_ns(self, layers: int, query_tokens: int, kv_len: KvLen) -> Any:
        if self.spec.little_step_ns <= 0:
            return LatencyModel.draft_model_ns(self, layers, query_tokens, kv_len)
        return _broadcast(self.spec.little_step_ns, kv_len)

    def parallel_draft_ns(
        self, draft_layers: int, query_tokens: int, kv_len: KvLen, vocab: int | None = None
    ) -> Any:
        extra = (query_tokens - 1) * self.spec.per_query_token_ns * draft_layers / self._layers_for_scaling()
        return _broadcast(_to_ns(self.spec.draft_step_ns + extra), kv_len)

    def p2p_ns(self, num_bytes: int) -> int:
        return 0

    def _layers_for_scaling(self) -> int:
        return self.shape.num_layers if self.shape is not None else 1

    def _tp_allreduce(self, layers: int, query_tokens: int, tp: int) -> int:
        if tp <= 1:
            return 0
        return 2 * layers * self.allreduce_ns(self.hidden_bytes(query_tokens), tp)


class RooflineLatency(LatencyModel):
    """Batch-1 decode roofline: weight + KV bytes over bandwidth vs FLOPs over peak, plus launch overhead."""

    shape: ModelShape  # a roofline always has both (LatencyModel's may be None)
    hardware: Hardware

    def __init__(
        self,
        shape: ModelShape,
        hardware: Hardware,
        spec: LatencySpec,
        draft_vocab_size: int = 0,
        aggregation_types: int = 0,
    ):
        super().__init__(shape, hardware, spec, draft_vocab_size)
        s = shape
        kv_out = s.num_kv_heads * s.head_dim
        self._full_layer_params = full_layer_params(s)  # what one token reads: a MoE's active experts
        self._layer_params: float = self._full_layer_params
        full = max(s.num_layers - s.linear_attention_layers, 0)
        self._full_attention_share = full / s.num_layers
        self._kv_bytes_per_position = 2 * kv_out * s.dtype_bytes  # one full-attention layer, K and V
        self._linear_state_bytes = s.num_attention_heads * s.head_dim * s.head_dim * s.dtype_bytes
        self._gdn = s.linear_head_dim > 0 and s.linear_attention_layers > 0
        if self._gdn:
            # Gated DeltaNet layers (linear_layer_params); state nv · d_k · d_v per layer
            d, nv = s.linear_head_dim, s.linear_value_heads
            linear = linear_layer_params(s)
            share = self._full_attention_share
            self._layer_params = share * self._full_layer_params + (1.0 - share) * linear
            self._linear_state_bytes = nv * d * d * s.dtype_bytes
        # PDM aggregation projections: aggr_projs[a] is (a+1)·H -> H, a = 0..m-1 (15·H² for m = 5)
        m = aggregation_types
        self._aggregation_types = m
        self._aggregation_params = m * (m + 1) // 2 * s.hidden_size * s.hidden_size
        self._bytes_per_ns = hardware.stream_bandwidth_gbps * hardware.bandwidth_efficiency  # GB/s == B/ns
        self._flops_per_ns = hardware.peak_tflops * 1e3 * hardware.flops_efficiency  # TFLOP/s == 1e3 FLOP/ns

    def _roof_ns(self, bytes_moved: Any, flops: Any) -> Any:
        return np.maximum(bytes_moved / self._bytes_per_ns, flops / self._flops_per_ns)

    def embed_ns(self, query_tokens: int = 1) -> int:
        s = self.shape
        return _to_ns(query_tokens * s.hidden_size * s.dtype_bytes / self._bytes_per_ns) + self._overhead(1)

    def layers_ns(self, layers: int, query_tokens: int, kv_len: KvLen, tp: int = 1) -> Any:
        s = self.shape
        kv = np.asarray(kv_len, dtype=np.float64)
        weight_bytes = self._layer_params * s.dtype_bytes
        state_bytes = (
            self._full_attention_share * kv * self._kv_bytes_per_position
            + (1.0 - self._full_attention_share) * self._linear_state_bytes
        )
        attention_flops = 4.0 * query_tokens * kv * s.num_attention_heads * s.head_dim
        flops = 2.0 * query_tokens * self._layer_params + self._full_attention_share * attention_flops
        per_layer = self._roof_ns((weight_bytes + state_bytes) / tp, flops / tp)
        total = layers * per_layer + self._overhead(layers)
        if tp > 1:
            total = total + 2 * layers * self.allreduce_ns(self.hidden_bytes(query_tokens), tp)
        return _to_ns(total) if isinstance(kv_len, np.ndarray) else _to_ns(float(total))

    def batch_sums_ns(
        self, layers: int, rows: int, sequences: int, kv_sum: int, rows_kv_sum: int, tp: int = 1
    ) -> int:
        """The batch roofline: weights read once, each sequence's KV (or linear state) read, FLOPs of every query
        row; memory-bound below the ridge point, compute-bound above (docs/serving.md §3)."""
        s = self.shape
        share = self._full_attention_share
        weight_bytes = self._layer_params * s.dtype_bytes
        state_bytes = (
            share * kv_sum * self._kv_bytes_per_position
            + (1.0 - share) * self._linear_state_bytes * sequences
        )
        attention_flops = 4.0 * rows_kv_sum * s.num_attention_heads * s.head_dim
        flops = 2.0 * rows * self._layer_params + share * attention_flops
        per_layer = max(
            (weight_bytes + state_bytes) / tp / self._bytes_per_ns, flops / tp / self._flops_per_ns
        )
        total = layers * per_layer + self._overhead(layers)
        if tp > 1:
            total += 2 * layers * self.allreduce_ns(self.hidden_bytes(rows), tp)
        return _to_ns(total)

    def head_ns(self, query_tokens: int = 1) -> int:
        return self.lm_head_ns(query_tokens, 0)

    def lm_head_ns(self, query_tokens: int = 1, vocab: int | None = 0) -> int:
        s = self.shape
        rows = self.draft_vocab_size if vocab is None else vocab
        params = s.hidden_size * (rows or s.vocab_size)
        value = self._roof_ns(params * s.dtype_bytes, 2.0 * query_tokens * params)
        return _to_ns(float(value)) + self._overhead(1)

    def pdm_ns(self, spec_layers: int, query_tokens: int, kv_len: KvLen) -> Any:
        """Aggregation projections (every in-flight row) + ``spec_layers`` full-attention base layers over the
        n + 1 rows + the draft lm_head (one row)."""
        if self._gdn:  # spec layers are full-attention copies of the base layer, whatever the base mixes
            layers = self._full_layers_ns(spec_layers, query_tokens, kv_len)
        else:
            layers = self.layers_ns(spec_layers, query_tokens, kv_len)
        if self._aggregation_params:
            s = self.shape
            aggregation = self._roof_ns(
                self._aggregation_params * s.dtype_bytes,
                2.0 * query_tokens * self._aggregation_params / self._aggregation_types,
            )
            layers = layers + _to_ns(float(aggregation)) + self._overhead(1)
        return layers + self.lm_head_ns(1, None)

    def _full_layers_ns(self, layers: int, query_tokens: int, kv_len: KvLen) -> Any:
        s = self.shape
        kv = np.asarray(kv_len, dtype=np.float64)
        weight_bytes = self._full_layer_params * s.dtype_bytes
        attention_flops = 4.0 * query_tokens * kv * s.num_attention_heads * s.head_dim
        flops = 2.0 * query_tokens * self._full_layer_params + attention_flops
        per_layer = self._roof_ns(weight_bytes + kv * self._kv_bytes_per_position, flops)
        total = layers * per_layer + self._overhead(layers)
        return _to_ns(total) if isinstance(kv_len, np.ndarray) else _to_ns(float(total))

    def chain_draft_ns(self, draft_layers: int, kv_len: KvLen, vocab: int | None = None) -> Any:
        return self.layers_ns(draft_layers, 1, kv_len) + self.lm_head_ns(1, vocab)

    def p2p_ns(self, num_bytes: int) -> int:
        hw = self.hardware
        transfer = num_bytes / hw.p2p_bandwidth_gbps if hw.p2p_bandwidth_gbps > 0 else 0.0
        return _to_ns(hw.p2p_latency_ns + transfer)

    def _overhead(self, layers: int) -> int:
        return layers * self.hardware.kernel_overhead_ns


def _broadcast(value: int, kv_len: KvLen) -> Any:
    if isinstance(kv_len, np.ndarray):
        return np.full(kv_len.shape, value, dtype=np.int64)
    return value
