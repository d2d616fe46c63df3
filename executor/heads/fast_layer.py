"""Functional fast path for a draft head's decoder layer(s): the HF-named module packed into the fast decoder's
fused layout (``executor.layer_fns.LayerWeights``), a fixed-capacity ``KVCache`` for the head, and one call that
runs a packed layer through the base model's (compiled, when ``compile_layers()`` ran) layer function.

Position masking replaces the HF-style ``HeadKVCache`` bookkeeping: a row written at a position beyond the committed
prefix is simply rewritten before any later query reads it, so a crop costs nothing and every call has static
shapes per (rows, window) — the shape class a CUDA graph is captured for. RoPE rows come from the base model's own
tables (the heads use ``base_rotary(config)``, the same frequencies).

API (shared with the SPD head work):
``pack_decoder_layer(layer, device=None, dtype=None) -> LayerWeights`` (q/k/v fused into qkv, gate/up into gate_up),
``layer_shape(layer) -> layer_fns.LayerShape``,
``new_head_cache(shape, capacity, limit, device, dtype, num_layers=1) -> KVCache``,
``run_head_layer(model, weights, shape, hidden, positions, cache, window, layer=0, attn_input=None)``.
"""

from __future__ import annotations

import torch
from torch import nn

from executor.cache import KVCache, cache_slots, persistent_buffers
from executor.layer_fns import LayerShape, LayerWeights
from spdsim.contract import SpdsimError


def _eps(norm) -> float:
    return float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))


def pack_decoder_layer(layer, device=None, dtype=None) -> LayerWeights:
    """Fuse an HF-named decoder layer (``input_layernorm``, ``self_attn.{q,k,v,o}_proj``, optional
    ``self_attn.{q,k}_norm``, ``post_attention_layernorm``, ``mlp.{gate,up,down}_proj``) into ``LayerWeights``."""
    attn, mlp = layer.self_attn, layer.mlp
    if attn.o_proj.bias is not None:
        raise SpdsimError("fast head layer: an o_proj bias is not supported by the fused decoder layer")

    def take(tensor: torch.Tensor) -> torch.Tensor:
        # a Parameter and an ordinary tensor (persistent_buffers), as the target's fused weights are: dynamo guards
        # on type and dispatch keys, so a plain or an inference tensor would compile every shape of the shared layer
        # function a second time
        moved = tensor.detach().to(device=device or tensor.device, dtype=dtype or tensor.dtype).contiguous()
        if moved.is_inference():  # a head loaded in inference mode: its weights need an ordinary copy
            moved = moved.clone()
        return nn.Parameter(moved, requires_grad=False)

    q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
    with persistent_buffers():
        qkv_bias = None
        if attn.q_proj.bias is not None:
            qkv_bias = take(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        return LayerWeights(
            input_norm=take(layer.input_layernorm.weight),
            qkv=take(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])),
            qkv_bias=qkv_bias,
            q_norm=None if q_norm is None else take(q_norm.weight),
            k_norm=None if k_norm is None else take(k_norm.weight),
            o_proj=take(attn.o_proj.weight),
            post_norm=take(layer.post_attention_layernorm.weight),
            gate_up=take(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])),
            down=take(mlp.down_proj.weight),
        )


def layer_shape(layer) -> LayerShape:
    """Heads, KV heads, head dim and RMSNorm eps of an HF-named decoder layer (ours or transformers')."""
    attn = layer.self_attn
    head_dim = getattr(attn, "head_dim", None)
    if head_dim is None:
        raise SpdsimError("fast head layer: the attention module has no head_dim")
    heads = getattr(attn, "num_heads", None) or attn.q_proj.weight.shape[0] // head_dim
    kv_heads = getattr(attn, "num_kv_heads", None) or attn.k_proj.weight.shape[0] // head_dim
    return LayerShape(int(heads), int(kv_heads), int(head_dim), _eps(layer.input_layernorm))


def new_head_cache(
    shape: LayerShape, capacity: int, limit: int, device, dtype, num_layers: int = 1
) -> KVCache:
    """A head's decode cache, sized like the base model's (``cache_slots``: its whole context), so a head's window
    is ``kv_bucket(position + 1, cache.max_len)`` like the base model's and one compile serves every schedule."""
    return KVCache(
        num_layers,
        shape.num_kv_heads,
        shape.head_dim,
        cache_slots(capacity, max(limit, capacity)),
        device=device,
        dtype=dtype,
    )


def run_head_layer(
    model,
    weights: LayerWeights,
    shape: LayerShape,
    hidden: torch.Tensor,
    positions: torch.Tensor,
    cache: KVCache,
    window: int,
    layer: int = 0,
    attn_input: torch.Tensor | None = None,
) -> torch.Tensor:
    """One packed layer on ``hidden [B, T, H]`` at ``positions [T]`` (device tensor) over the first ``window``
    slots of ``cache`` layer ``layer``; uses ``model``'s RoPE tables and its layer function for T query tokens
    (compiled after ``model.compile_layers()``). No host sync: graph-capturable."""
    layer_fn, inputs_fn = model.layer_functions(hidden.shape[1])
    lengths = cache.lengths[layer : layer + 1]
    cos, sin, mask = inputs_fn(model.rope_cos, model.rope_sin, positions, window, lengths)
    return layer_fn(
        hidden,
        weights,
        shape,
        cos,
        sin,
        positions,
        mask,
        cache.keys[layer][:, :, :window],
        cache.values[layer][:, :, :window],
        attn_input=attn_input,
    )
