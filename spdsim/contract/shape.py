"""The model shape: what the simulator prices and the executor profiles (``executor profile`` writes it into
the profile bundle, ``spdsim`` reads it back)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """Decoder-only transformer shape; enough for rooflines and stage splits."""

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool = False
    dtype_bytes: int = 2
    # Qwen3.5: layers with linear attention (Gated DeltaNet) have a fixed-size state instead of a KV cache.
    linear_attention_layers: int = 0
    # Qwen3.5 full-attention layers: q_proj also emits a per-head sigmoid gate on the attention output (2x q rows).
    attention_output_gate: bool = False
    # Gated-DeltaNet shape (0 = price linear-attention layers with the full-attention layer's weights, as before)
    linear_key_heads: int = 0
    linear_value_heads: int = 0
    linear_head_dim: int = 0
    # Mixture of experts (0 = dense). ``intermediate_size`` is then the MLP width one token reads (its
    # ``experts_per_token`` routed experts plus any shared expert), which is what a batch-1 decode step streams;
    # the weights held are ``num_experts`` experts of ``expert_intermediate_size`` (spdsim.scenario.memory).
    num_experts: int = 0
    experts_per_token: int = 0
    expert_intermediate_size: int = 0
