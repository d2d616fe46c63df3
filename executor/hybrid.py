"""Fast decoder for the Qwen3.5 hybrid family (transformers ``qwen3_5_text``): Gated-DeltaNet linear-attention
layers and gated full-attention layers (``layer_types``; 3 : 1 with ``full_attention_interval`` 4).

Same API as ``executor.fastmodel.FastModel`` (``embed``, ``forward_layers``, ``head``, ``forward``,
``new_cache``, ``num_layers``, ``cfg``, ``device``, ``dtype``, ``norm``, ``embed_tokens``, ``lm_head_weight``,
``compile_layers``), so every schedule runs on it unchanged. Its cache (``HybridCache``) holds K/V for the full
attention layers and, for each DeltaNet layer, a ring of the recurrent states and conv inputs of its last positions
(``executor.deltanet``): ``crop(length)`` rewinds both, as the SPD reference's per-layer ring buffers do
(docs/spd.md §1.3 step 5), with no copy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from executor.cache import KVCache, cache_slots, persistent_buffers
from executor.deltanet import (
    RECURRENT_MAX_TOKENS,
    AttnShape,
    AttnWeights,
    DeltaNetShape,
    DeltaNetWeights,
    centred_head_logits,
    centred_rms_norm,
    deltanet_layer,
    gated_attention_layer,
)
from executor.fastmodel import DecoderAPI, dense
from executor.layer_fns import compile_options, compiled_step_inputs, raise_recompile_limits, step_inputs

HYBRID_MODEL_TYPES = ("qwen3_5_text",)
LINEAR, FULL = "linear_attention", "full_attention"
# Ring slots per DeltaNet layer: a rewind may go back up to STATE_RING - conv_kernel positions (SPD: n − 1,
# chain SD: K). 32 covers n ≤ 16 and K ≤ 16.
STATE_RING = 32


@dataclass(frozen=True)
class HybridConfig:
    """Architecture of a Qwen3.5-style hybrid decoder (field names shared with ``fastmodel.ModelConfig``)."""

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
    rotary_dim: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    layer_types: tuple[str, ...]
    conv_kernel: int
    linear_key_heads: int
    linear_value_heads: int
    linear_key_dim: int
    linear_value_dim: int
    qk_norm: bool = True
    attention_bias: bool = False
    rope_llama3: None = None

    @classmethod
    def from_hf(cls, hf: Any) -> HybridConfig:
        if hf.model_type not in HYBRID_MODEL_TYPES:
            raise ValueError(
                f"model_type '{hf.model_type}' is not a hybrid family ({', '.join(HYBRID_MODEL_TYPES)})"
            )
        rope = dict(getattr(hf, "rope_parameters", None) or {})
        if rope.get("rope_type", "default") != "default":
            raise ValueError(
                f"rope_type '{rope['rope_type']}' is not supported by the hybrid decoder (default)"
            )
        factor = float(rope.get("partial_rotary_factor", getattr(hf, "partial_rotary_factor", 1.0)))
        if bool(getattr(hf, "attention_bias", False)):
            raise ValueError("attention_bias is not supported by the hybrid decoder")
        return cls(
            model_type=hf.model_type,
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            intermediate_size=hf.intermediate_size,
            num_layers=hf.num_hidden_layers,
            num_heads=hf.num_attention_heads,
            num_kv_heads=hf.num_key_value_heads,
            head_dim=hf.head_dim,
            rms_norm_eps=float(hf.rms_norm_eps),
            rope_theta=float(rope.get("rope_theta", 10000.0)),
            rotary_dim=int(hf.head_dim * factor),
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            max_position_embeddings=int(hf.max_position_embeddings),
            layer_types=tuple(hf.layer_types),
            conv_kernel=hf.linear_conv_kernel_dim,
            linear_key_heads=hf.linear_num_key_heads,
            linear_value_heads=hf.linear_num_value_heads,
            linear_key_dim=hf.linear_key_head_dim,
            linear_value_dim=hf.linear_value_head_dim,
        )

    @property
    def linear_layers(self) -> tuple[int, ...]:
        return tuple(i for i, kind in enumerate(self.layer_types) if kind == LINEAR)

    @property
    def conv_dim(self) -> int:
        return (
            2 * self.linear_key_heads * self.linear_key_dim + self.linear_value_heads * self.linear_value_dim
        )

    def layer_parameters(self, index: int) -> int:
        h, i = self.hidden_size, self.intermediate_size
        common = 3 * h * i + 2 * h
        if self.layer_types[index] == LINEAR:
            nv, vd = self.linear_value_heads, self.linear_value_heads * self.linear_value_dim
            mixer = h * (self.conv_dim + vd + 2 * nv) + self.conv_dim * self.conv_kernel + 2 * nv
            return common + mixer + self.linear_value_dim + vd * h
        hd = self.head_dim
        return (
            common + h * (2 * self.num_heads + 2 * self.num_kv_heads) * hd + self.num_heads * hd * h + 2 * hd
        )

    def num_parameters(self) -> int:
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return sum(self.layer_parameters(i) for i in range(self.num_layers)) + embed + self.hidden_size

    def decode_weight_bytes(self, element_size: int) -> int:
        """Weight bytes one decode step reads: all layers, lm_head, final norm, one embedding row."""
        h = self.hidden_size
        layers_and_head = self.num_parameters() - self.vocab_size * h * (0 if self.tie_word_embeddings else 1)
        return (layers_and_head + h) * element_size

    def state_bytes(self) -> int:
        """Float32 recurrent state of all DeltaNet layers (read and written once per decode step)."""
        per = self.linear_value_heads * self.linear_key_dim * self.linear_value_dim * 4
        return per * len(self.linear_layers)


class HybridCache(KVCache):
    """K/V windows of the full-attention layers and the DeltaNet state rings; ``KVCache``'s length bookkeeping
    (``crop`` moves lengths only: a DeltaNet layer's next forward at ``length`` reads its ring's state after
    ``length − 1``, valid within ``ring − conv_kernel`` positions).

    ``keys[i]``/``values[i]`` are ``[B, kv, max_len, hd]`` for a full-attention layer and empty for a DeltaNet
    layer; ``conv_rings[i]`` ``[B, R, C]`` and ``state_rings[i]`` ``[R, B, nv, dk, dv]`` (float32) the reverse.
    """

    def __init__(
        self,
        cfg: HybridConfig,
        max_len: int,
        *,
        batch_size=1,
        device="cpu",
        dtype=torch.float32,
        ring=STATE_RING,
    ):
        self.num_layers = cfg.num_layers
        self.max_len = max_len
        self.batch_size = batch_size
        self.ring = ring
        kv_shape = (batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
        empty = (batch_size, cfg.num_kv_heads, 0, cfg.head_dim)
        full = [kind == FULL for kind in cfg.layer_types]
        state = (ring, batch_size, cfg.linear_value_heads, cfg.linear_key_dim, cfg.linear_value_dim)
        with persistent_buffers():
            self.keys = [torch.zeros(kv_shape if f else empty, device=device, dtype=dtype) for f in full]
            self.values = [torch.zeros(kv_shape if f else empty, device=device, dtype=dtype) for f in full]
            self.conv_rings = [
                None if f else torch.zeros(batch_size, ring, cfg.conv_dim, device=device, dtype=dtype)
                for f in full
            ]
            self.state_rings = [
                None if f else torch.zeros(state, device=device, dtype=torch.float32) for f in full
            ]
            self.lengths = torch.zeros(cfg.num_layers, dtype=torch.long, device=device)

    def nbytes(self, kv_len: int | None = None) -> int:
        """Bytes of K+V over the full-attention layers for ``kv_len`` positions, plus one state per DeltaNet layer."""
        positions = self.max_len if kv_len is None else kv_len
        total = 0
        for keys, states in zip(self.keys, self.state_rings, strict=True):
            if states is None:
                total += 2 * keys.numel() // self.max_len * keys.element_size() * positions
            else:
                total += states[0].numel() * states.element_size()
        return total


class _DeltaNetLayer(nn.Module):
    def __init__(self, cfg: HybridConfig) -> None:
        super().__init__()
        h, nv = cfg.hidden_size, cfg.linear_value_heads
        vd = nv * cfg.linear_value_dim

        def p(*shape, fill=None):
            t = torch.empty(*shape) if fill is None else torch.full(shape, fill)
            return nn.Parameter(t, requires_grad=False)

        self.input_norm = p(h, fill=0.0)
        self.in_proj = p(cfg.conv_dim + vd + 2 * nv, h)
        self.conv = p(cfg.conv_dim, cfg.conv_kernel)
        self.a_log = p(nv)
        self.dt_bias = p(nv, fill=1.0)
        self.out_norm = p(cfg.linear_value_dim, fill=1.0)
        self.out_proj = p(h, vd)
        self.post_norm = p(h, fill=0.0)
        self.gate_up = p(2 * cfg.intermediate_size, h)
        self.down = p(h, cfg.intermediate_size)

    def weights(self) -> DeltaNetWeights:
        return DeltaNetWeights(*(getattr(self, name) for name in DeltaNetWeights._fields))


class _AttnLayer(nn.Module):
    def __init__(self, cfg: HybridConfig) -> None:
        super().__init__()
        h, hd = cfg.hidden_size, cfg.head_dim

        def p(*shape, fill=None):
            t = torch.empty(*shape) if fill is None else torch.full(shape, fill)
            return nn.Parameter(t, requires_grad=False)

        self.input_norm = p(h, fill=0.0)
        self.qkv = p((2 * cfg.num_heads + 2 * cfg.num_kv_heads) * hd, h)
        self.q_norm = p(hd, fill=0.0)
        self.k_norm = p(hd, fill=0.0)
        self.o_proj = p(h, cfg.num_heads * hd)
        self.post_norm = p(h, fill=0.0)
        self.gate_up = p(2 * cfg.intermediate_size, h)
        self.down = p(h, cfg.intermediate_size)

    def weights(self) -> AttnWeights:
        return AttnWeights(*(getattr(self, name) for name in AttnWeights._fields))


def _rope_tables(cfg: HybridConfig, max_seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    dim = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    freqs = torch.arange(max_seq_len, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


class HybridModel(DecoderAPI, nn.Module):
    """Qwen3.5 hybrid decoder with fused weights and static-shape steps; see the module docstring."""

    is_hybrid = True

    def __init__(self, cfg: HybridConfig, max_seq_len: int = 4096) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_seq_len = max_seq_len
        self.attn_shape = AttnShape(
            cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rotary_dim, cfg.rms_norm_eps
        )
        self.delta_shape = DeltaNetShape(
            cfg.linear_key_heads,
            cfg.linear_value_heads,
            cfg.linear_key_dim,
            cfg.linear_value_dim,
            cfg.conv_kernel,
            cfg.rms_norm_eps,
        )
        self.embed_tokens = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size), requires_grad=False)
        self.layers = nn.ModuleList(
            _DeltaNetLayer(cfg) if kind == LINEAR else _AttnLayer(cfg) for kind in cfg.layer_types
        )
        self.norm = nn.Parameter(torch.zeros(cfg.hidden_size), requires_grad=False)
        self.lm_head_weight = (
            None
            if cfg.tie_word_embeddings
            else nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size), requires_grad=False)
        )
        self.rope_cos, self.rope_sin = _rope_tables(cfg, max_seq_len, "cpu")
        self._compiled: dict[str, Callable[..., Any]] | None = None
        self._weights: list[Any] | None = None

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf_model: nn.Module, *, device=None, dtype=None, max_seq_len: int = 4096) -> HybridModel:
        cfg = HybridConfig.from_hf(hf_model.config)
        state = hf_model.state_dict()
        some = state["model.embed_tokens.weight"]
        return cls.from_state_dict(
            cfg, state, device=device or some.device, dtype=dtype or some.dtype, max_seq_len=max_seq_len
        )

    @classmethod
    def from_state_dict(
        cls, cfg: HybridConfig, state: dict[str, torch.Tensor], *, device, dtype, max_seq_len: int = 4096
    ) -> HybridModel:
        """Fuse HF-named tensors (``model.layers.{i}.linear_attn.in_proj_qkv.weight`` ...) into the fast layout."""
        with torch.device("meta"):
            model = cls(cfg, max_seq_len=max_seq_len)

        def take(name: str) -> torch.Tensor:
            return state[name].to(device=device, dtype=dtype)

        def fuse(*names: str) -> torch.Tensor:
            return torch.cat([take(n) for n in names], dim=0)

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
            layer.gate_up = param(fuse(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"))
            layer.down = param(take(p + "mlp.down_proj.weight"))
            if cfg.layer_types[i] == LINEAR:
                m = p + "linear_attn."
                names = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")
                layer.in_proj = param(fuse(*(m + n + ".weight" for n in names)))
                layer.conv = param(take(m + "conv1d.weight")[:, 0])
                layer.a_log = param(take(m + "A_log"))
                layer.dt_bias = param(take(m + "dt_bias"))
                layer.out_norm = param(take(m + "norm.weight"))
                layer.out_proj = param(take(m + "out_proj.weight"))
            else:
                a = p + "self_attn."
                layer.qkv = param(fuse(a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"))
                layer.q_norm = param(take(a + "q_norm.weight"))
                layer.k_norm = param(take(a + "k_norm.weight"))
                layer.o_proj = param(take(a + "o_proj.weight"))
        model.rope_cos, model.rope_sin = _rope_tables(cfg, max_seq_len, device)
        return model

    def compile_layers(self, mode: str | None = None, backend: Any = None, gemv: bool = False) -> None:
        """Compile each layer kind once (all layers of a kind share code: same shapes, weights are arguments).
        ``backend`` and ``gemv`` as in ``FastModel.compile_layers``: a torch.compile backend in place of inductor
        (tests count compiles with one); the layers' one-token matmuls through ``executor.gemv.decode_linear``."""
        raise_recompile_limits()
        # untuned: every Qwen3.5 bundle and run so far was measured so; tuning is to be measured against --layers
        # gemv first (studies/qwen35_h200/README.md, session 12)
        kwargs = compile_options(mode, backend, tuned=False)

        def compiled(fn):
            return torch.compile(fn, dynamic=False, fullgraph=True, **kwargs)

        linear_layer: Callable[..., torch.Tensor] = deltanet_layer
        attn_layer: Callable[..., torch.Tensor] = gated_attention_layer
        if gemv:
            from executor.gemv import decode_linear

            linear_layer = functools.partial(deltanet_layer, linear=decode_linear)
            attn_layer = functools.partial(gated_attention_layer, linear=decode_linear)
        self._compiled = {
            LINEAR: compiled(linear_layer),
            FULL: compiled(attn_layer),
            "inputs": compiled_step_inputs(**kwargs),
            "head": compiled(centred_head_logits),
        }

    def uncompile_layers(self) -> None:
        self._compiled = None

    # -- the decoder API (device, dtype, num_layers, embed, forward: DecoderAPI) ---------------------------
    def new_cache(
        self, max_len: int | None = None, batch_size: int = 1, ring: int = STATE_RING
    ) -> HybridCache:
        max_len = cache_slots(max_len or self.max_seq_len, self.max_seq_len, batch_size)
        return HybridCache(
            self.cfg, max_len, batch_size=batch_size, device=self.device, dtype=self.dtype, ring=ring
        )

    def layer_weights(self, index: int):
        if self._weights is None:
            self._weights = [layer.weights() for layer in self.layers]
        return self._weights[index]

    def _fn(self, name: str, query_tokens: int):
        eager = {
            LINEAR: deltanet_layer,
            FULL: gated_attention_layer,
            "inputs": step_inputs,
            "head": centred_head_logits,
        }
        if self._compiled is not None and query_tokens <= RECURRENT_MAX_TOKENS:
            return self._compiled[name]
        return eager[name]

    def layer_functions(self, query_tokens: int) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """The full-attention layer and step-input functions (compiled, or eager), as ``FastModel``'s: what the
        SPD drafter's Qwen3.5 spec layers (gated full attention) run through (``executor.heads.fast_spd``)."""
        return self._fn(FULL, query_tokens), self._fn("inputs", query_tokens)

    def forward_layers(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        start_layer: int,
        end_layer: int,
        cache: HybridCache,
        collect: Iterable[int] = (),
        kv_len: int | None = None,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Layers [start_layer, end_layer) on ``hidden [B, T, H]`` at contiguous ``positions [T]``; see
        ``fastmodel.DecoderAPI.forward_layers`` (a DeltaNet layer continues from its state after
        ``positions[0] − 1``)."""
        window = cache.max_len if kv_len is None else kv_len
        wanted = set(collect)
        collected: dict[int, torch.Tensor] = {}
        if start_layer in wanted:
            collected[start_layer] = hidden
        t = hidden.shape[1]
        layers = cache.layer_range(start_layer, end_layer)
        lengths = cache.lengths[layers.start : layers.stop]
        cos, sin, mask = self._fn("inputs", t)(self.rope_cos, self.rope_sin, positions, window, lengths)
        linear_fn, attn_fn = self._fn(LINEAR, t), self._fn(FULL, t)
        for i in layers:
            if self.cfg.layer_types[i] == LINEAR:
                hidden = linear_fn(
                    hidden,
                    self.layer_weights(i),
                    self.delta_shape,
                    positions,
                    cache.conv_rings[i],
                    cache.state_rings[i],
                )
            else:
                hidden = attn_fn(
                    hidden,
                    self.layer_weights(i),
                    self.attn_shape,
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

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return centred_rms_norm(hidden, self.norm, self.cfg.rms_norm_eps)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + lm_head; logits in float32 ``[B, T, V]``."""
        if self._compiled is not None:
            hidden = dense(hidden)
        return self._fn("head", hidden.shape[1])(
            hidden, self.norm, self.lm_head_matrix, self.cfg.rms_norm_eps
        )
