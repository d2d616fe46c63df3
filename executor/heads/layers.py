"""Building blocks shared by the draft heads: a Qwen3-style decoder layer (QK-norm, full attention, base rotary)
with HF parameter names, and a small preallocated KV cache with crop. On a Qwen3.5 base the layer is that family's
dense full-attention layer (`Qwen3_5DecoderLayer` with `full_attention`): gated attention (q_proj emits query and
gate per head, `[2·nh·hd, H]`), zero-centred RMSNorms `x̂·(1 + w)`, partial RoPE (docs/spd.md §2.2, §2.4).

The layer is our own compact module rather than transformers' class so that heads can run against a cache that
keeps only a prefix of the rows they compute (SPD's transient in-flight rows) and with explicit structural masks
(training). Its parameter names and shapes are exactly those of `Qwen3DecoderLayer`, so checkpoints interchange.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from spdsim.contract import SpdsimError

SUPPORTED_BASE_FAMILIES = ("qwen3", "llama", "qwen3_5_text", "qwen3_5")
# Qwen3.5 (hybrid) bases: their spec layers are gated-attention layers with zero-centred norms.
QWEN35_FAMILIES = ("qwen3_5_text", "qwen3_5")
# Families the reference v11 loader accepts but this executor does not run (MoE bases).
REFERENCE_ONLY_FAMILIES = ("qwen3_moe", "qwen3_5_moe", "qwen3_5_moe_text")


def full_vocab_ids(draft_token_ids: torch.Tensor, draft_index: torch.Tensor) -> torch.Tensor:
    """Draft-vocabulary indices -> full-vocabulary ids, on the device. ``table[index]`` with a 0-dim index reads it on
    the host (a sync, which invalidates a CUDA-graph capture); ``index_select`` does not."""
    return draft_token_ids.index_select(0, draft_index.reshape(-1)).view(draft_index.shape)


def same_family(a: str | None, b: str | None) -> bool:
    """Model types naming the same base family (`qwen3_5` is the multimodal wrapper of `qwen3_5_text`)."""
    return (a in QWEN35_FAMILIES and b in QWEN35_FAMILIES) or a == b


@dataclass(frozen=True)
class LayerShape:
    """Dimensions of one full-size decoder layer of the base architecture."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    attention_bias: bool = False
    gated_attention: bool = False  # Qwen3.5: q_proj emits (query, gate) per head; sigmoid(gate) on the output
    centred_norm: bool = False  # Qwen3.5: RMSNorm x̂·(1 + w), weights initialised to 0

    @staticmethod
    def from_base_config(config) -> LayerShape:
        check_base_family(config)
        qwen35 = config.model_type in QWEN35_FAMILIES
        config = getattr(config, "text_config", None) or config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return LayerShape(
            hidden_size=config.hidden_size,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads or config.num_attention_heads,
            head_dim=head_dim,
            intermediate_size=config.intermediate_size,
            rms_norm_eps=config.rms_norm_eps,
            attention_bias=bool(getattr(config, "attention_bias", False)),
            gated_attention=qwen35,
            centred_norm=qwen35,
        )


def check_base_family(config) -> None:
    """One-line error for a base model this executor cannot attach a head to."""
    model_type = getattr(config, "model_type", None)
    if model_type in SUPPORTED_BASE_FAMILIES:
        return
    if model_type in REFERENCE_ONLY_FAMILIES:
        raise SpdsimError(
            f"base model_type {model_type!r} is a v11 family this executor does not run; "
            f"supported: {', '.join(SUPPORTED_BASE_FAMILIES)}"
        )
    raise SpdsimError(
        f"base model_type {model_type!r} is not a supported base family; "
        f"supported: {', '.join(SUPPORTED_BASE_FAMILIES)}"
    )


def base_rotary(config) -> nn.Module:
    """The base family's own rotary module (its inv_freq buffers are non-persistent: no state_dict keys)."""
    check_base_family(config)
    if config.model_type == "llama":
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        return LlamaRotaryEmbedding(config)
    if (
        config.model_type in QWEN35_FAMILIES
    ):  # partial RoPE; mRoPE sections collapse to 1-D for text positions
        from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5TextRotaryEmbedding

        return Qwen3_5TextRotaryEmbedding(getattr(config, "text_config", None) or config)
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    return Qwen3RotaryEmbedding(config)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, centred: bool = False) -> torch.Tensor:
    """Qwen3/Llama RMSNorm (x̂·w), or Qwen3.5's zero-centred one (x̂·(1 + w) in float32), like transformers."""
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    if centred:
        return (x32 * (1.0 + weight.float())).to(dtype)
    return weight * x32.to(dtype)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, centred: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size) if centred else torch.ones(size))
        self.eps = eps
        self.centred = centred

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, self.centred)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, T, hd]; cos/sin: [B, T, rd] with rd <= hd (partial RoPE rotates the first rd dims)."""
    dim = cos.shape[-1]
    if dim < x.shape[-1]:
        rot, rest = x[..., :dim], x[..., dim:]
        return torch.cat((rot * cos.unsqueeze(1) + _rotate_half(rot) * sin.unsqueeze(1), rest), dim=-1)
    return x * cos.unsqueeze(1) + _rotate_half(x) * sin.unsqueeze(1)


CAPACITY_QUANTUM = 256
# Attention backends for the heads' SDPA, cuDNN's left out: the GPU runs paid ~40 ms once per new attention shape
# in the heads (studies/fidelity/results/fidelity.md), as a per-shape plan build would; a head sees a new shape at every
# prompt's prefill. (The cause is inferred from the timings, not confirmed by a profiler.)
HEAD_SDPA_BACKENDS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)


class HeadKVCache:
    """Per-layer K/V for a head, preallocated and grown on demand; `length` rows are committed.

    A forward writes its rows after the committed prefix and then commits only `keep` of them, so rows that
    must be recomputed next step (SPD in-flight tokens, EAGLE rows built from the head's own hidden) never
    enter the prefix.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, device, dtype, capacity: int = 256):
        capacity = (
            -(-capacity // CAPACITY_QUANTUM) * CAPACITY_QUANTUM
        )  # prompts of similar length share shapes
        shape = (num_layers, 1, num_kv_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def ensure_capacity(self, needed: int) -> None:
        capacity = self.keys.shape[3]
        if needed <= capacity:
            return
        new_capacity = -(-max(needed, 2 * capacity) // CAPACITY_QUANTUM) * CAPACITY_QUANTUM
        pad = (0, 0, 0, new_capacity - capacity)
        self.keys = F.pad(self.keys, pad)
        self.values = F.pad(self.values, pad)

    def crop(self, length: int) -> None:
        """Drop committed rows at index >= length (rollback after a rejection)."""
        self.length = min(self.length, length)


class DecoderLayer(nn.Module):
    """Qwen3DecoderLayer-equivalent (QK-norm, full attention); `q_in` lets EAGLE-3 feed a 2H attention input."""

    def __init__(self, shape: LayerShape, attn_input_size: int | None = None):
        super().__init__()
        in_size = attn_input_size or shape.hidden_size
        self.shape = shape
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps, shape.centred_norm)
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps, shape.centred_norm)
        self.self_attn = _Attention(shape, in_size)
        self.mlp = _MLP(shape)

    def forward(
        self,
        hidden: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        layer_index: int = 0,
        cache: HeadKVCache | None = None,
        attn_mask: torch.Tensor | None = None,
        attn_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden: [B, T, H] residual stream; attn_input (already normed) replaces norm(hidden) if given."""
        normed = self.input_layernorm(hidden) if attn_input is None else attn_input
        hidden = hidden + self.self_attn(normed, cos_sin, layer_index, cache, attn_mask)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class _MLP(nn.Module):
    def __init__(self, shape: LayerShape):
        super().__init__()
        self.gate_proj = nn.Linear(shape.hidden_size, shape.intermediate_size, bias=False)
        self.up_proj = nn.Linear(shape.hidden_size, shape.intermediate_size, bias=False)
        self.down_proj = nn.Linear(shape.intermediate_size, shape.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _Attention(nn.Module):
    def __init__(self, shape: LayerShape, in_size: int):
        super().__init__()
        s = shape
        self.num_heads, self.num_kv_heads, self.head_dim = s.num_heads, s.num_kv_heads, s.head_dim
        self.gated = s.gated_attention
        q_rows = (2 if s.gated_attention else 1) * s.num_heads * s.head_dim
        self.q_proj = nn.Linear(in_size, q_rows, bias=s.attention_bias)
        self.k_proj = nn.Linear(in_size, s.num_kv_heads * s.head_dim, bias=s.attention_bias)
        self.v_proj = nn.Linear(in_size, s.num_kv_heads * s.head_dim, bias=s.attention_bias)
        self.o_proj = nn.Linear(s.num_heads * s.head_dim, s.hidden_size, bias=s.attention_bias)
        self.q_norm = RMSNorm(s.head_dim, s.rms_norm_eps, s.centred_norm)
        self.k_norm = RMSNorm(s.head_dim, s.rms_norm_eps, s.centred_norm)

    def forward(self, x, cos_sin, layer_index, cache, attn_mask):
        batch, steps, _ = x.shape
        q = self.q_proj(x)
        gate = None
        if self.gated:
            q, gate = q.view(batch, steps, self.num_heads, 2 * self.head_dim).chunk(2, dim=-1)
            gate = gate.reshape(batch, steps, -1)
        q = self.q_norm(q.reshape(batch, steps, self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(batch, steps, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(batch, steps, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos_sin
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            # Attend over the whole preallocated capacity with a mask, not over the committed length: the
            # attention shape then changes only when the capacity doubles. A KV length that grew every call cost
            # ~40 ms per new shape on the H100/H200 (studies/fidelity/results/fidelity.md, cause 1).
            start = cache.length
            cache.ensure_capacity(start + steps)
            cache.keys[layer_index, :, :, start : start + steps] = k
            cache.values[layer_index, :, :, start : start + steps] = v
            k = cache.keys[layer_index]
            v = cache.values[layer_index]
            if attn_mask is None:
                attn_mask = causal_mask(steps, start, x.device, width=k.shape[2])
        elif attn_mask is None and steps > 1:
            attn_mask = causal_mask(steps, 0, x.device)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        with sdpa_kernel(list(HEAD_SDPA_BACKENDS)):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(batch, steps, -1)
        return self.o_proj(out if gate is None else out * torch.sigmoid(gate))


def causal_mask(steps: int, prefix: int, device, width: int | None = None) -> torch.Tensor:
    """Boolean [steps, width or prefix+steps]: new row i sees the whole prefix and new rows <= i, no later column."""
    cols = torch.arange(prefix + steps if width is None else width, device=device)
    rows = torch.arange(steps, device=device) + prefix
    return cols[None, :] <= rows[:, None]


def init_linear_weights(module: nn.Module, std: float = 0.02) -> None:
    """N(0, std) for every Linear (biases zero), RMSNorm weights to one — the HF init of these families."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, RMSNorm):
            (nn.init.zeros_ if sub.centred else nn.init.ones_)(sub.weight)


def base_config_of(model) -> object:
    """A transformers config for a fast model (its `cfg`), or the object itself if it already is one."""
    cfg = getattr(model, "cfg", model)
    if hasattr(cfg, "num_hidden_layers"):
        return cfg
    from transformers import LlamaConfig, Qwen3Config

    if cfg.model_type in QWEN35_FAMILIES:
        return _qwen35_config(cfg)

    if cfg.model_type not in SUPPORTED_BASE_FAMILIES:
        check_base_family(cfg)
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_llama3 is not None:
        factor, low, high, original = cfg.rope_llama3
        rope = {
            "rope_type": "llama3",
            "rope_theta": cfg.rope_theta,
            "factor": factor,
            "low_freq_factor": low,
            "high_freq_factor": high,
            "original_max_position_embeddings": original,
        }
    config_class = LlamaConfig if cfg.model_type == "llama" else Qwen3Config
    return config_class(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        attention_bias=cfg.attention_bias,
        tie_word_embeddings=cfg.tie_word_embeddings,
        rope_parameters=rope,
    )


def _qwen35_config(cfg) -> object:
    """transformers' ``Qwen3_5TextConfig`` of a ``hybrid.HybridConfig``."""
    from transformers import AutoConfig

    return AutoConfig.for_model(
        "qwen3_5_text",
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        layer_types=list(cfg.layer_types),
        linear_conv_kernel_dim=cfg.conv_kernel,
        linear_num_key_heads=cfg.linear_key_heads,
        linear_num_value_heads=cfg.linear_value_heads,
        linear_key_head_dim=cfg.linear_key_dim,
        linear_value_head_dim=cfg.linear_value_dim,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": cfg.rope_theta,
            "partial_rotary_factor": cfg.rotary_dim / cfg.head_dim,
        },
    )
