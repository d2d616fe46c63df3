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


# Parameter counts of one layer, shared by the roofline (what one token reads: the active experts) and the memory
# check (what a GPU holds: every expert).
def mlp_params(s: ModelShape, all_experts: bool = False) -> int:
    """The (SwiGLU) MLP of a layer; a MoE's ``intermediate_size`` is its active experts' (+ shared) width."""
    if all_experts and s.num_experts:
        shared = max(s.intermediate_size - s.experts_per_token * s.expert_intermediate_size, 0)
        routed = s.num_experts * s.expert_intermediate_size
        return 3 * s.hidden_size * (routed + shared) + s.hidden_size * s.num_experts  # + the router
    return 3 * s.hidden_size * s.intermediate_size


def full_layer_params(s: ModelShape, all_experts: bool = False) -> int:
    """A full-attention layer (Qwen3.5: q_proj also emits the per-head output gate)."""
    attn_out = s.num_attention_heads * s.head_dim
    q_rows = attn_out * (2 if s.attention_output_gate else 1)
    attention = s.hidden_size * (q_rows + 2 * s.num_kv_heads * s.head_dim) + attn_out * s.hidden_size
    return attention + mlp_params(s, all_experts)


def linear_layer_params(s: ModelShape, all_experts: bool = False) -> int:
    """A Gated-DeltaNet layer (in_proj_qkvz + in_proj_ba + out_proj + MLP); without its dims, a full layer."""
    if not s.linear_head_dim:
        return full_layer_params(s, all_experts)
    d, nk, nv = s.linear_head_dim, s.linear_key_heads, s.linear_value_heads
    return (
        s.hidden_size * (2 * nk * d + 2 * nv * d + 2 * nv)
        + nv * d * s.hidden_size
        + mlp_params(s, all_experts)
    )


def uneven_counts(num_layers: int, num_stages: int) -> tuple[int, ...]:
    """The most even split of L layers into n stages (earlier stages one layer more): the suggestion both the
    simulator and the executor offer when n does not divide L."""
    base, extra = divmod(num_layers, num_stages)
    return tuple(base + (1 if s < extra else 0) for s in range(num_stages))
