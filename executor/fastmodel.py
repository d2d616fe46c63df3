"""Compact decoder for the Llama / Qwen2 / Qwen3 families, built for decode speed (gpt-fast spirit).

transformers stays the loader and the numerical reference; this module holds the same weights fused
(QKV in one matrix, gate/up in one matrix), runs every decoder layer through one pure function that
``torch.compile`` can compile once for all layers, and attends over a fixed window of the static KV cache
with position masking, so every step has static shapes and can be captured in a CUDA graph.

API used by the schedules and heads (keep stable):
``embed(tokens)``, ``forward_layers(hidden, positions, start_layer, end_layer, cache, collect=(), kv_len=None)``,
``final_norm(hidden)``, ``lm_head(normed)``, ``head(hidden)``, ``forward(tokens, positions, cache)``,
``new_cache(max_len)``. Hidden-state index convention (HF): h_0 = embedding output, h_k = output of layer k-1,
pre final norm.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from executor.cache import KVCache, cache_slots
from executor.layer_fns import (
    LayerShape,
    LayerWeights,
    compile_options,
    compiled_step_inputs,
    decoder_layer,
    head_logits,
    raise_recompile_limits,
    rms_norm,
    step_inputs,
)

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
# Forwards of more new tokens than this (prefill) run the eager layer even after compile_layers(): every prompt
# length would otherwise be one more static-shape compile.
COMPILED_MAX_TOKENS = 16
# The compiled layer variants by name (``--layers`` of ``spdsim exec run`` and the studies):
# FastModel.compile_layers' options for each (studies/executor_speed/README.md measures them). "compiled" and
# "gemv" (one-token matmuls as executor.gemv's Triton GEMV, no cuBLAS call) serve the hybrid too; the fused ones
# are FastModel's own (FUSED_VARIANTS)
LAYER_VARIANTS: dict[str, dict[str, bool]] = {
    "compiled": {},
    "gemv": {"gemv": True},
    "fused": {"fused": True},
    "fused+pdl": {"fused": True, "pdl": True},
}
FUSED_VARIANTS = ("fused", "fused+pdl")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a dense decoder; everything the fast path needs, nothing else."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    qk_norm: bool
    attention_bias: bool
    max_position_embeddings: int
    # Llama-3.1 frequency scaling: (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)
    rope_llama3: tuple[float, float, float, int] | None = None

    @classmethod
    def from_hf(cls, hf_config: Any) -> ModelConfig:
        """Read a transformers config (v4 ``rope_theta/rope_scaling`` or v5 ``rope_parameters``)."""
        model_type = hf_config.model_type
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type '{model_type}' is not supported by the fast decoder "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        rope = dict(getattr(hf_config, "rope_parameters", None) or {})
        legacy = getattr(hf_config, "rope_scaling", None) or {}
        rope = {**legacy, **rope}
        theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise ValueError(
                f"rope_type '{rope_type}' is not supported by the fast decoder (default, llama3)"
            )
        llama3 = None
        if rope_type == "llama3":
            llama3 = (
                float(rope["factor"]),
                float(rope["low_freq_factor"]),
                float(rope["high_freq_factor"]),
                int(rope["original_max_position_embeddings"]),
            )
        head_dim = (
            getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
        )
        return cls(
            model_type=model_type,
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size,
            num_layers=hf_config.num_hidden_layers,
            num_heads=hf_config.num_attention_heads,
            num_kv_heads=hf_config.num_key_value_heads or hf_config.num_attention_heads,
            head_dim=head_dim,
            rms_norm_eps=float(hf_config.rms_norm_eps),
            rope_theta=float(theta),
            tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
            qk_norm=model_type == "qwen3",
            attention_bias=bool(getattr(hf_config, "attention_bias", model_type == "qwen2")),
            max_position_embeddings=int(getattr(hf_config, "max_position_embeddings", 4096)),
            rope_llama3=llama3,
        )

    def num_parameters(self) -> int:
        h, i, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = h * (self.num_heads + 2 * self.num_kv_heads) * hd + self.num_heads * hd * h
        layer = attn + 3 * h * i + 2 * h + (2 * hd if self.qk_norm else 0)
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + embed + h

    def decode_weight_bytes(self, element_size: int) -> int:
        """Weight bytes one decode step must read: all layers, lm_head, final norm, one embedding row."""
        h = self.hidden_size
        layers_and_head = self.num_parameters() - self.vocab_size * h * (0 if self.tie_word_embeddings else 1)
        return (layers_and_head + h) * element_size


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies (float32), with the Llama-3.1 smooth scaling when the config asks for it."""
    exponents = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta**exponents)
    if cfg.rope_llama3 is None:
        return inv_freq
    factor, low_ff, high_ff, original_max = cfg.rope_llama3
    low_freq_wavelen = original_max / low_ff
    high_freq_wavelen = original_max / high_ff
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_max / wavelen - low_ff) / (high_ff - low_ff)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class DecoderAPI:
    """The decoder API of the module docstring over what a decoder provides: ``cfg``, ``shape``, ``embed_tokens``,
    ``rope_cos``/``rope_sin``, ``layer_weights(i)``, ``layer_functions(query_tokens)`` and ``head(hidden)``.
    Shared by FastModel and a tensor-parallel shard (``executor.distributed.tp.ShardedModel``)."""

    is_hybrid = False  # HybridModel (Qwen3.5: DeltaNet + gated attention) says True

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.dtype

    @property
    def num_layers(self) -> int:
        return self.cfg.num_layers

    @property
    def lm_head_matrix(self) -> torch.Tensor:
        """The output projection: the untied ``lm_head_weight``, else the tied embedding."""
        return self.embed_tokens if self.lm_head_weight is None else self.lm_head_weight

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, T]`` -> hidden ``[B, T, H]`` (h_0)."""
        return F.embedding(tokens, self.embed_tokens)

    def lm_head(self, normed: torch.Tensor) -> torch.Tensor:
        return F.linear(normed, self.lm_head_matrix)

    def forward_layers(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        start_layer: int,
        end_layer: int,
        cache: KVCache,
        collect: Iterable[int] = (),
        kv_len: int | None = None,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run decoder layers [start_layer, end_layer) on ``hidden [B, T, H]`` at absolute ``positions [T]``.

        Writes K/V of those positions into the cache and attends over slots ``<= position`` within the first
        ``kv_len`` slots (default: the whole cache; must exceed the largest position). Returns the output hidden
        state and ``{k: h_k}`` for the requested HF hidden-state indices k with start_layer <= k <= end_layer
        (k == start_layer is the input; others are ignored).
        """
        window = cache.max_len if kv_len is None else kv_len
        wanted = set(collect)
        collected: dict[int, torch.Tensor] = {}
        if start_layer in wanted:
            collected[start_layer] = hidden
        layer_fn, inputs_fn = self.layer_functions(hidden.shape[1])
        layers = cache.layer_range(start_layer, end_layer)
        lengths = cache.lengths[layers.start : layers.stop]
        cos, sin, mask = inputs_fn(self.rope_cos, self.rope_sin, positions, window, lengths)
        for i in layers:
            hidden = layer_fn(
                hidden,
                self.layer_weights(i),
                self.shape,
                cos,
                sin,
                positions,
                mask,
                cache.keys[i][:, :, :window],
                cache.values[i][:, :, :window],
            )
            if i + 1 in wanted:
                collected[i + 1] = hidden
        return hidden, collected

    def forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, kv_len: int | None = None
    ) -> torch.Tensor:
        """Whole model: tokens ``[B, T]`` at ``positions [T]`` -> logits ``[B, T, V]`` (float32)."""
        hidden, _ = self.forward_layers(
            self.embed(tokens), positions, 0, self.num_layers, cache, kv_len=kv_len
        )
        return self.head(hidden)


class _Layer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, hd = cfg.hidden_size, cfg.head_dim
        qkv_rows = (cfg.num_heads + 2 * cfg.num_kv_heads) * hd
        self.input_norm = nn.Parameter(torch.ones(h), requires_grad=False)
        self.qkv = nn.Parameter(torch.empty(qkv_rows, h), requires_grad=False)
        self.qkv_bias = (
            nn.Parameter(torch.zeros(qkv_rows), requires_grad=False) if cfg.attention_bias else None
        )
        self.q_norm = nn.Parameter(torch.ones(hd), requires_grad=False) if cfg.qk_norm else None
        self.k_norm = nn.Parameter(torch.ones(hd), requires_grad=False) if cfg.qk_norm else None
        self.o_proj = nn.Parameter(torch.empty(h, cfg.num_heads * hd), requires_grad=False)
        self.post_norm = nn.Parameter(torch.ones(h), requires_grad=False)
        self.gate_up = nn.Parameter(torch.empty(2 * cfg.intermediate_size, h), requires_grad=False)
        self.down = nn.Parameter(torch.empty(h, cfg.intermediate_size), requires_grad=False)

    def weights(self) -> LayerWeights:
        return LayerWeights(
            self.input_norm,
            self.qkv,
            self.qkv_bias,
            self.q_norm,
            self.k_norm,
            self.o_proj,
            self.post_norm,
            self.gate_up,
            self.down,
        )


def dense(hidden: torch.Tensor) -> torch.Tensor:
    """``hidden`` with freshly allocated strides (a copy only if it has others): a compiled head or layer is
    specialised on strides, so a slice (a prefill's last position) would compile it again, and on a GPU maybe with
    other reductions than the decode steps' (other bf16 rounding)."""
    return (
        hidden
        if hidden.stride() == dense_strides(hidden.shape)
        else hidden.clone(memory_format=torch.contiguous_format)
    )


def dense_strides(shape) -> tuple[int, ...]:
    """Row-major strides of a freshly allocated tensor of ``shape`` (size-1 dimensions included, as dynamo guards)."""
    strides, step = [], 1
    for size in reversed(tuple(shape)):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


class FastModel(DecoderAPI, nn.Module):
    """Decoder with fused weights and a static-shape step; see the module docstring for the API."""

    def __init__(self, cfg: ModelConfig, max_seq_len: int = 4096) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_seq_len = max_seq_len
        self.shape = LayerShape(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rms_norm_eps)
        self.embed_tokens = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size), requires_grad=False)
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size), requires_grad=False)
        self.lm_head_weight = (
            None
            if cfg.tie_word_embeddings
            else nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size), requires_grad=False)
        )
        freqs = torch.arange(max_seq_len, dtype=torch.float32)[:, None] * rope_inv_freq(cfg)[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)
        self._compiled_fn: Callable[..., torch.Tensor] | None = None
        self._compiled_inputs: Callable[..., tuple[torch.Tensor, ...]] | None = None
        self._compiled_head: Callable[..., torch.Tensor] | None = None
        self._layer_weights: list[LayerWeights] | None = None

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_hf(
        cls,
        hf_model: nn.Module,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        max_seq_len: int = 4096,
    ) -> FastModel:
        """Build from a transformers ``*ForCausalLM`` (its config and state_dict)."""
        cfg = ModelConfig.from_hf(hf_model.config)
        state = hf_model.state_dict()
        some = state["model.embed_tokens.weight"]
        model = cls.from_state_dict(
            cfg, state, device=device or some.device, dtype=dtype or some.dtype, max_seq_len=max_seq_len
        )
        return model

    @classmethod
    def from_state_dict(
        cls,
        cfg: ModelConfig,
        state: dict[str, torch.Tensor],
        *,
        device: torch.device | str,
        dtype: torch.dtype,
        max_seq_len: int = 4096,
    ) -> FastModel:
        """Fuse HF-named tensors (``model.layers.{i}.self_attn.q_proj.weight`` ...) into the fast layout."""
        with torch.device("meta"):
            model = cls(cfg, max_seq_len=max_seq_len)
        model.rope_cos = model.rope_sin = None  # rebuilt below on the real device

        def take(name: str) -> torch.Tensor:
            return state[name].to(device=device, dtype=dtype)

        def fuse(*names: str) -> torch.Tensor:
            return torch.cat([state[n].to(device=device, dtype=dtype) for n in names], dim=0)

        def param(t: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(t.contiguous(), requires_grad=False)

        model.embed_tokens = param(take("model.embed_tokens.weight"))
        model.norm = param(take("model.norm.weight"))
        if not cfg.tie_word_embeddings:
            model.lm_head_weight = param(take("lm_head.weight"))
        for i, layer in enumerate(model.layers):
            p = f"model.layers.{i}."
            layer.input_norm = param(take(p + "input_layernorm.weight"))
            layer.post_norm = param(take(p + "post_attention_layernorm.weight"))
            attn = p + "self_attn."
            layer.qkv = param(fuse(attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"))
            layer.o_proj = param(take(attn + "o_proj.weight"))
            if cfg.attention_bias:
                layer.qkv_bias = param(fuse(attn + "q_proj.bias", attn + "k_proj.bias", attn + "v_proj.bias"))
            if cfg.qk_norm:
                layer.q_norm = param(take(attn + "q_norm.weight"))
                layer.k_norm = param(take(attn + "k_norm.weight"))
            layer.gate_up = param(fuse(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"))
            layer.down = param(take(p + "mlp.down_proj.weight"))
        freqs = torch.arange(max_seq_len, dtype=torch.float32, device=device)[:, None]
        angles = freqs * rope_inv_freq(cfg).to(device)[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        model.rope_cos = angles.cos()
        model.rope_sin = angles.sin()
        return model

    def compile_layers(
        self,
        mode: str | None = None,
        backend: Any = None,
        gemv: bool = False,
        fused: bool = False,
        pdl: bool = False,
    ) -> None:
        """Compile the layer function once (all layers share its code: same shapes, weights are arguments).
        ``backend``: a torch.compile backend in place of inductor (tests count compiles with one). ``gemv``:
        one-token matmuls through ``executor.gemv``; ``fused``: one-token steps through
        ``executor.fused_decode.fused_decoder_layer`` (GEMVs with norms, SwiGLU and residuals folded in, one
        attention kernel); ``pdl`` (with ``fused``): one-token steps run the fused layer uncompiled (it is Triton
        kernels only) as programmatic dependent launches, which inductor's launcher cannot make. All three are
        benchmark variants until measured faster."""
        if gemv and fused:
            raise ValueError(
                "gemv and fused are alternatives: the fused layer already runs its matmuls as GEMVs"
            )
        if pdl and not fused:
            raise ValueError("pdl launches the fused layer's kernels: it needs fused=True")
        raise_recompile_limits()
        kwargs = compile_options(mode, backend)
        layer: Callable[..., torch.Tensor] = decoder_layer
        if gemv:
            from executor.gemv import decode_linear

            layer = functools.partial(decoder_layer, linear=decode_linear)
        if fused:
            from executor.fused_decode import fused_decoder_layer

            layer = fused_decoder_layer
        self._compiled_fn = torch.compile(layer, dynamic=False, fullgraph=True, **kwargs)
        if pdl:
            from executor.fused_decode import pdl_one_token_steps

            self._compiled_fn = pdl_one_token_steps(self._compiled_fn)
        self._compiled_inputs = compiled_step_inputs(**kwargs)
        self._compiled_head = torch.compile(head_logits, dynamic=False, fullgraph=True, **kwargs)

    def uncompile_layers(self) -> None:
        self._compiled_fn = self._compiled_inputs = self._compiled_head = None

    # -- what DecoderAPI builds on ------------------------------------------------------------------------
    def new_cache(self, max_len: int | None = None, batch_size: int = 1) -> KVCache:
        max_len = cache_slots(max_len or self.max_seq_len, self.max_seq_len, batch_size)
        return KVCache(
            self.cfg.num_layers,
            self.cfg.num_kv_heads,
            self.cfg.head_dim,
            max_len,
            batch_size=batch_size,
            device=self.device,
            dtype=self.dtype,
        )

    def layer_weights(self, index: int) -> LayerWeights:
        if self._layer_weights is None:
            self._layer_weights = [layer.weights() for layer in self.layers]
        return self._layer_weights[index]

    def layer_functions(self, query_tokens: int) -> tuple[Callable[..., torch.Tensor], Callable[..., tuple]]:
        """The layer and step-input functions of a forward of ``query_tokens`` tokens (compiled, or eager)."""
        if self._compiled_fn is not None and query_tokens <= COMPILED_MAX_TOKENS:
            return self._compiled_fn, self._compiled_inputs
        return decoder_layer, step_inputs

    # -- the API (with DecoderAPI's) ------------------------------------------------------------------------
    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return rms_norm(hidden, self.norm, self.cfg.rms_norm_eps)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + lm_head; logits in float32 ``[B, T, V]``."""
        compiled = self._compiled_head is not None and hidden.shape[1] <= COMPILED_MAX_TOKENS
        if compiled:
            hidden = dense(hidden)
        return (self._compiled_head if compiled else head_logits)(
            hidden, self.norm, self.lm_head_matrix, self.cfg.rms_norm_eps
        )
