"""The two token mixers of the Qwen3.5 hybrid decoder as pure functions (the fast path of ``executor.hybrid``):
a Gated-DeltaNet layer (short causal conv, gated delta rule recurrence) and a gated full-attention layer (q_proj
emits query and an output gate per head, partial RoPE, zero-centred QK-norm).

Numerics follow transformers' ``qwen3_5`` (``modeling_qwen3_5.py``): zero-centred RMSNorm ``x̂·(1 + w)`` computed
in float32, the recurrence in float32, L2-normalised q/k, queries scaled by ``d_k^-1/2``, the gated RMSNorm on the
DeltaNet output, ``sigmoid(gate)`` on the attention output.

Rollback without copies. A DeltaNet layer keeps no "current" state: a ring of ``R`` slots holds the recurrent
state after each of the last ``R`` positions (slot ``p % R``) and the conv inputs of those positions. A forward at
position ``p`` reads the slots of ``p − 1`` (zero state at ``p = 0``) and writes the slots of its own positions.
So rewinding to a length ``ℓ`` is nothing at all — the next forward at ``ℓ`` reads the state after ``ℓ − 1`` — as
long as fewer than ``R − conv_kernel`` positions were run past it; everything is indexed on the device (graph-safe).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

# Multi-token forwards longer than this (prefill) use the chunked form of the recurrence and keep only the state
# after their last position (a rewind never goes into a prompt); shorter ones loop token by token and keep all.
RECURRENT_MAX_TOKENS = 16
CHUNK = 64


class DeltaNetShape(NamedTuple):
    key_heads: int
    value_heads: int
    key_dim: int
    value_dim: int
    conv_kernel: int
    eps: float


class DeltaNetWeights(NamedTuple):
    input_norm: torch.Tensor  # [H] (zero-centred)
    in_proj: torch.Tensor  # [2 nk dk + nv dv (qkv) + nv dv (z) + nv (b) + nv (a), H]
    conv: torch.Tensor  # [2 nk dk + nv dv, K] depthwise
    a_log: torch.Tensor  # [nv]
    dt_bias: torch.Tensor  # [nv]
    out_norm: torch.Tensor  # [dv] (gated RMSNorm, plain x̂·w)
    out_proj: torch.Tensor  # [H, nv dv]
    post_norm: torch.Tensor  # [H]
    gate_up: torch.Tensor  # [2 I, H]
    down: torch.Tensor  # [H, I]


class AttnShape(NamedTuple):
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rotary_dim: int
    eps: float


class AttnWeights(NamedTuple):
    input_norm: torch.Tensor  # [H]
    qkv: torch.Tensor  # [2 nh hd (query, gate per head) + 2 kv hd, H]
    q_norm: torch.Tensor  # [hd]
    k_norm: torch.Tensor  # [hd]
    o_proj: torch.Tensor  # [H, nh hd]
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


def centred_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3.5 RMSNorm: ``(x̂ · (1 + w))`` in float32, cast back to the input dtype."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * (1.0 + weight.float())).to(x.dtype)


Linear = Callable[..., torch.Tensor]


def _mlp(x: torch.Tensor, post_norm, gate_up, down, eps: float, linear: Linear = F.linear) -> torch.Tensor:
    gate, up = linear(centred_rms_norm(x, post_norm, eps), gate_up).chunk(2, dim=-1)
    return x + linear(F.silu(gate) * up, down)


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + 1e-6)


def delta_rule_steps(q, k, v, g, beta, state) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token gated delta rule. q, k: [B, nv, T, dk]; v: [B, nv, T, dv]; g, beta: [B, nv, T];
    state [B, nv, dk, dv] (float32). Returns (out [B, nv, T, dv], states after each token [T, B, nv, dk, dv])."""
    outs, states = [], []
    for t in range(q.shape[2]):
        state = state * g[:, :, t].exp()[..., None, None]
        k_t = k[:, :, t]
        kv_mem = (state * k_t.unsqueeze(-1)).sum(dim=-2)
        delta = (v[:, :, t] - kv_mem) * beta[:, :, t].unsqueeze(-1)
        state = state + k_t.unsqueeze(-1) * delta.unsqueeze(-2)
        outs.append((state * q[:, :, t].unsqueeze(-1)).sum(dim=-2))
        states.append(state)
    return torch.stack(outs, dim=2), torch.stack(states)


def delta_rule_chunked(q, k, v, g, beta, state) -> tuple[torch.Tensor, torch.Tensor]:
    """The same recurrence in chunks of ``CHUNK`` (transformers' ``torch_chunk_gated_delta_rule``); returns the
    output and only the final state ``[B, nv, dk, dv]``."""
    length = q.shape[2]
    pad = (CHUNK - length % CHUNK) % CHUNK
    q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    beta, g = (F.pad(x, (0, pad)) for x in (beta, g))
    bsz, heads, total, dk = k.shape
    dv = v.shape[-1]
    chunks = total // CHUNK
    v_beta = v * beta.unsqueeze(-1)
    k_beta = k * beta.unsqueeze(-1)
    q, k, k_beta, v_beta = (x.reshape(bsz, heads, chunks, CHUNK, x.shape[-1]) for x in (q, k, k_beta, v_beta))
    g = g.reshape(bsz, heads, chunks, CHUNK).cumsum(dim=-1)
    upper = torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=q.device).triu(1)
    decay = (g.unsqueeze(-1) - g.unsqueeze(-2)).masked_fill(upper, float("-inf")).exp()
    system = (k_beta @ k.transpose(-1, -2)) * decay
    intra = (q @ k.transpose(-1, -2)) * decay
    new_values = torch.linalg.solve_triangular(system, v_beta, upper=False, unitriangular=True)
    k_cumdecay = torch.linalg.solve_triangular(
        system, k_beta * g.exp().unsqueeze(-1), upper=False, unitriangular=True
    )
    q = q * g.exp().unsqueeze(-1)
    k = k * (g[..., -1:] - g).exp().unsqueeze(-1)
    chunk_decay = g[..., -1].exp()[..., None, None]
    out = torch.zeros(bsz, heads, chunks, CHUNK, dv, dtype=q.dtype, device=q.device)
    for i in range(chunks):
        v_new = new_values[:, :, i] - k_cumdecay[:, :, i] @ state
        out[:, :, i] = q[:, :, i] @ state + intra[:, :, i] @ v_new
        state = state * chunk_decay[:, :, i] + k[:, :, i].transpose(-1, -2) @ v_new
    return out.reshape(bsz, heads, total, dv)[:, :, :length], state


def deltanet_layer(
    x: torch.Tensor,
    w: DeltaNetWeights,
    shape: DeltaNetShape,
    positions: torch.Tensor,
    conv_ring: torch.Tensor,
    state_ring: torch.Tensor,
    linear: Linear = F.linear,
) -> torch.Tensor:
    """One Gated-DeltaNet decoder layer on ``x [B, T, H]`` at contiguous ``positions [T]``.

    ``conv_ring [B, R, C]``: conv inputs of the last positions (slot p % R); ``state_ring [R, B, nv, dk, dv]``
    (float32): recurrent state after each of them. Both are read at the positions before ``positions[0]`` and
    written at ``positions`` in place. ``linear``: the weight matmuls, as in ``layer_fns.decoder_layer``.
    """
    nk, nv, dk, dv, kernel = (
        shape.key_heads,
        shape.value_heads,
        shape.key_dim,
        shape.value_dim,
        shape.conv_kernel,
    )
    bsz, t, _ = x.shape
    ring = conv_ring.shape[1]
    key_size, value_size = nk * dk, nv * dv
    conv_dim = 2 * key_size + value_size
    mixed, z, b, a = linear(centred_rms_norm(x, w.input_norm, shape.eps), w.in_proj).split(
        (conv_dim, value_size, nv, nv), dim=-1
    )
    start = positions[:1]
    # Short causal conv over [previous K-1 inputs, new inputs] (previous ones are zero before position 0).
    past = start + torch.arange(1 - kernel, 0, device=x.device)
    history = conv_ring.index_select(1, past.remainder(ring)) * (past >= 0).to(x.dtype)[None, :, None]
    seq = torch.cat((history, mixed), dim=1)
    keep = positions[-ring:] if t > ring else positions
    conv_ring.index_copy_(1, keep.remainder(ring), mixed[:, -keep.shape[0] :])
    conv = sum(seq[:, j : j + t] * w.conv[:, j] for j in range(kernel))
    mixed = F.silu(conv)
    query, key, value = mixed.split((key_size, key_size, value_size), dim=-1)
    query = query.reshape(bsz, t, nk, dk)
    key = key.reshape(bsz, t, nk, dk)
    value = value.reshape(bsz, t, nv, dv)
    if nv != nk:
        query = query.repeat_interleave(nv // nk, dim=2)
        key = key.repeat_interleave(nv // nk, dim=2)
    query = _l2norm(query.transpose(1, 2).float()) * dk**-0.5
    key = _l2norm(key.transpose(1, 2).float())
    value = value.transpose(1, 2).float()
    beta = b.sigmoid().transpose(1, 2).float()
    g = (-w.a_log.float().exp() * F.softplus(a.float() + w.dt_bias.float())).transpose(1, 2)

    prev = (start - 1).remainder(ring)
    state = state_ring.index_select(0, prev)[0] * (start > 0).float()
    if t <= RECURRENT_MAX_TOKENS:
        out, states = delta_rule_steps(query, key, value, g, beta, state)
        state_ring.index_copy_(0, positions.remainder(ring), states)
    else:
        out, final = delta_rule_chunked(query, key, value, g, beta, state)
        state_ring.index_copy_(0, positions[-1:].remainder(ring), final[None])
    out = out.transpose(1, 2).to(x.dtype)  # [B, T, nv, dv]
    # Gated RMSNorm per value head: x̂·w in the input dtype, times silu(z) in float32.
    o32 = out.float()
    normed = (
        w.out_norm * (o32 * torch.rsqrt(o32.pow(2).mean(-1, keepdim=True) + shape.eps)).to(x.dtype)
    ).float()
    gated = (normed * F.silu(z.reshape(bsz, t, nv, dv).float())).to(x.dtype)
    x = x + linear(gated.reshape(bsz, t, value_size), w.out_proj)
    return _mlp(x, w.post_norm, w.gate_up, w.down, shape.eps, linear)


def _partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    return torch.cat((rot * cos + rotated * sin, rest), dim=-1)


def gated_attention_layer(
    x: torch.Tensor,
    w: AttnWeights,
    shape: AttnShape,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    linear: Linear = F.linear,
) -> torch.Tensor:
    """One gated full-attention decoder layer; the KV window and position mask work as in ``executor.fastmodel``
    (``k_cache``/``v_cache`` ``[B, kv, W, hd]`` views, ``mask [T, W]``, ``cos``/``sin`` ``[T, rotary_dim]``);
    ``linear``: the weight matmuls, as in ``layer_fns.decoder_layer``."""
    nh, kv, hd = shape.num_heads, shape.num_kv_heads, shape.head_dim
    bsz, t, _ = x.shape
    window = k_cache.shape[2]
    group = nh // kv
    qg, k, v = linear(centred_rms_norm(x, w.input_norm, shape.eps), w.qkv).split(
        (2 * nh * hd, kv * hd, kv * hd), dim=-1
    )
    q, gate = qg.view(bsz, t, nh, 2 * hd).chunk(2, dim=-1)
    gate = gate.reshape(bsz, t, nh * hd)
    q = centred_rms_norm(q, w.q_norm, shape.eps)
    k = centred_rms_norm(k.view(bsz, t, kv, hd), w.k_norm, shape.eps)
    v = v.view(bsz, t, kv, hd)
    cos_b = cos.to(x.dtype)[None, :, None, :]
    sin_b = sin.to(x.dtype)[None, :, None, :]
    q = _partial_rope(q, cos_b, sin_b, shape.rotary_dim)
    k = _partial_rope(k, cos_b, sin_b, shape.rotary_dim)
    k_cache.index_copy_(2, positions, k.transpose(1, 2))
    v_cache.index_copy_(2, positions, v.transpose(1, 2))
    q = q.permute(0, 2, 1, 3).reshape(bsz, kv, group * t, hd)
    scores = torch.matmul(q, k_cache.transpose(2, 3)) * (hd**-0.5)
    scores = scores.view(bsz, kv, group, t, window) + mask
    probs = torch.softmax(scores.float(), dim=-1).to(x.dtype).view(bsz, kv, group * t, window)
    attn = torch.matmul(probs, v_cache).view(bsz, nh, t, hd).transpose(1, 2).reshape(bsz, t, nh * hd)
    x = x + linear(attn * torch.sigmoid(gate), w.o_proj)
    return _mlp(x, w.post_norm, w.gate_up, w.down, shape.eps, linear)


def centred_head_logits(hidden: torch.Tensor, norm: torch.Tensor, lm_head: torch.Tensor, eps: float):
    """Final zero-centred norm + lm_head, logits in float32."""
    return F.linear(centred_rms_norm(hidden, norm, eps), lm_head).float()
