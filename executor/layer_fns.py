"""The decoder layer as pure tensor functions: what ``torch.compile`` compiles once for every layer and a CUDA graph
captures. Weights and shapes are arguments (``LayerWeights`` in fused layout, ``LayerShape``), so one compiled
function serves all layers of a model, the heads' layers and a tensor-parallel shard (``reduce``). No host sync.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F


class LayerWeights(NamedTuple):
    """One decoder layer's tensors in fused layout (the arguments of ``decoder_layer``)."""

    input_norm: torch.Tensor  # [H]
    qkv: torch.Tensor  # [(nh + 2 kv) hd, H]
    qkv_bias: torch.Tensor | None  # [(nh + 2 kv) hd]
    q_norm: torch.Tensor | None  # [hd]
    k_norm: torch.Tensor | None  # [hd]
    o_proj: torch.Tensor  # [H, nh hd]
    post_norm: torch.Tensor  # [H]
    gate_up: torch.Tensor  # [2 I, H]
    down: torch.Tensor  # [H, I]


class LayerShape(NamedTuple):
    num_heads: int
    num_kv_heads: int
    head_dim: int
    eps: float


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in float32, scaled in the input dtype (the HF Llama/Qwen convention)."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of ``gate_up = cat(gate, up)`` along the last dimension (the fused gate/up output)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def attention(
    qkv: torch.Tensor,
    w: LayerWeights,
    shape: LayerShape,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
) -> torch.Tensor:
    """The attention middle of a decoder layer, ``qkv [B, T, (nh + 2 kv) hd]`` -> ``[B, T, nh hd]``: q/k norms
    (Qwen3), RoPE, the K/V write of ``positions`` into the cache windows, grouped-query attention over the masked
    window. Shared by :func:`decoder_layer` and the one-token fused layer's fallback (``executor.fused_decode``)."""
    nh, kv, hd = shape.num_heads, shape.num_kv_heads, shape.head_dim
    bsz, t, _ = qkv.shape
    window = k_cache.shape[2]
    group = nh // kv

    q, k, v = qkv.split((nh * hd, kv * hd, kv * hd), dim=-1)
    q = q.view(bsz, t, nh, hd)
    k = k.view(bsz, t, kv, hd)
    v = v.view(bsz, t, kv, hd)
    if w.q_norm is not None:
        q = rms_norm(q, w.q_norm, shape.eps)
        k = rms_norm(k, w.k_norm, shape.eps)
    cos_b = cos.to(qkv.dtype)[None, :, None, :]
    sin_b = sin.to(qkv.dtype)[None, :, None, :]
    q = apply_rope(q, cos_b, sin_b)
    k = apply_rope(k, cos_b, sin_b)
    k_cache.index_copy_(2, positions, k.transpose(1, 2))
    v_cache.index_copy_(2, positions, v.transpose(1, 2))

    # Grouped-query attention without repeating K/V: queries of one KV group are stacked along the row axis.
    q = q.permute(0, 2, 1, 3).reshape(bsz, kv, group * t, hd)
    scores = torch.matmul(q, k_cache.transpose(2, 3)) * (hd**-0.5)
    scores = scores.view(bsz, kv, group, t, window) + mask
    probs = torch.softmax(scores.float(), dim=-1).to(qkv.dtype).view(bsz, kv, group * t, window)
    return torch.matmul(probs, v_cache).view(bsz, nh, t, hd).transpose(1, 2).reshape(bsz, t, nh * hd)


def decoder_layer(
    x: torch.Tensor,
    w: LayerWeights,
    shape: LayerShape,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    attn_input: torch.Tensor | None = None,
    linear: Callable[..., torch.Tensor] = F.linear,
) -> torch.Tensor:
    """One pre-norm decoder layer on ``x [B, T, H]``; writes K/V of ``positions`` into the cache in place.

    ``k_cache``/``v_cache`` are ``[B, kv, W, hd]`` windows (views) of the layer's cache; ``mask [T, W]`` is the
    additive position mask (0 where slot <= query position, -inf elsewhere); ``cos``/``sin`` are ``[T, hd]``.
    ``reduce``: a tensor-parallel shard's sum over the ranks of its two partial outputs (attention, MLP), applied
    before each residual add; ``shape`` and ``w`` then hold the shard's heads and slices.
    ``attn_input``: an already-normed attention input replacing ``norm(x)`` (EAGLE-3's cat(embed, hidden), 2H wide;
    ``w.qkv`` then has that many columns). ``linear``: the weight matmuls (``executor.gemv.decode_linear`` streams
    one-token rows through a Triton GEMV).
    """
    normed = rms_norm(x, w.input_norm, shape.eps) if attn_input is None else attn_input
    qkv = linear(normed, w.qkv, w.qkv_bias)
    attn = attention(qkv, w, shape, cos, sin, positions, mask, k_cache, v_cache)
    attn_out = linear(attn, w.o_proj)
    x = x + (attn_out if reduce is None else reduce(attn_out))

    gate_up = linear(rms_norm(x, w.post_norm, shape.eps), w.gate_up)
    mlp_out = linear(swiglu(gate_up), w.down)
    return x + (mlp_out if reduce is None else reduce(mlp_out))


def step_rows(
    rope_cos: torch.Tensor, rope_sin: torch.Tensor, positions: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RoPE rows and the additive position mask of one forward of ``positions`` over ``window`` cache slots."""
    slots = torch.arange(window, device=positions.device)
    mask = torch.where(slots[None, :] <= positions[:, None], 0.0, float("-inf")).to(torch.float32)
    return rope_cos[positions], rope_sin[positions], mask


def raise_lengths(lengths: torch.Tensor, positions: torch.Tensor) -> None:
    """Raise the forward's layers' cache ``lengths`` in place to cover ``positions`` (no host sync)."""
    lengths.copy_(torch.maximum(lengths, positions.max() + 1))


def raise_recompile_limits() -> None:
    """One static-shape compile per (query tokens, KV window) class: a profile grid of 5 query sizes x 3 windows
    (x 5 stage lengths, before ``compiled_step_inputs``) hit dynamo's limit of 64 on an H100
    (studies/executor_speed/README.md, session 4)."""
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(getattr(config, limit), 256))
    if hasattr(config, "accumulated_recompile_limit"):
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 1024)


def compile_options(mode: str | None, backend: Any = None, tuned: bool = True) -> dict[str, Any]:
    """``torch.compile`` keywords of the executor's layers: ``backend`` in place of inductor (tests count compiles
    with one); else inductor in ``mode``; with no mode, ``tuned``: coordinate-descent tuning, which also lowers the
    batch-1 matmuls to tuned reductions fused with their norms (on an H200 it took the Qwen3 AR step from 54.7% to
    59.6% (qwen3-4b) and from 70.5% to 82.2% (qwen3-8b) of copy bandwidth, studies/executor_speed/README.md)."""
    if backend is not None:
        return {"backend": backend}
    if mode or not tuned:
        return {"mode": mode}
    return {"options": {"coordinate_descent_tuning": True}}


StepInputs = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _raising_lengths(rows: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> StepInputs:
    def inputs(
        rope_cos: torch.Tensor,
        rope_sin: torch.Tensor,
        positions: torch.Tensor,
        window: int,
        lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RoPE rows and the additive position mask of one forward; raises the layers' cache ``lengths``."""
        raise_lengths(lengths, positions)
        return rows(rope_cos, rope_sin, positions, window)

    return inputs


step_inputs: StepInputs = _raising_lengths(step_rows)


def compiled_step_inputs(**compile_kwargs: Any) -> StepInputs:
    """``step_inputs`` with its rows compiled: the lengths update stays outside the compiled region, so one
    compile serves every stage length (the number of layers is the shape of ``lengths``) and a profile grid
    compiles once per (query tokens, window) instead of once per (query tokens, window, stage length)."""
    return _raising_lengths(torch.compile(step_rows, dynamic=False, fullgraph=True, **compile_kwargs))


def head_logits(hidden: torch.Tensor, norm: torch.Tensor, lm_head: torch.Tensor, eps: float) -> torch.Tensor:
    """Final norm + lm_head, logits in float32."""
    return F.linear(rms_norm(hidden, norm, eps), lm_head).float()
