"""The one-token decoder layer in few kernels: four GEMVs with their norms, SwiGLU and residual adds folded in
(``executor.gemv``), and the attention middle (q/k norms, RoPE, the K/V write, attention over the live slots) as
one Triton kernel.

Why (``studies/executor_speed/README.md``, session 8): the qwen3-4b AR step on an H100 spends ~0.8 ms of 3.76 ms in
~400 small kernels (about 11 a layer) between its matmuls; 80% of the copy bandwidth leaves them ~0.37 ms. This
layer runs 5 kernels (6 for windows over ``SLOTS_PER_SPLIT`` slots, which add the split-combining one), and its
attention reads only the slots before the query position, not the whole window.

The attention kernel: one program per (KV head, split of the live slots). Each normalises and rotates its group's
query heads, attends over its split of the slots ``< position`` in ``BLOCK_SLOTS`` blocks with an online float32
softmax; split 0 also writes the new K/V at ``position`` and adds that slot from registers (no program reads back a
slot written in the same launch). Splits are combined in a second kernel in a fixed order: no atomics, the same
bits every run. It takes the query position from ``positions`` instead of the additive ``mask``: the mask of
``layer_fns.step_rows`` (slot <= position) is what it implements. Rounding: q/k norms and RoPE round where the eager
composition rounds; scores stay float32 (eager rounds them to the input dtype), and the unnormalised
probabilities are rounded for the P @ V product (eager rounds the normalised ones).

Without Triton, on the CPU outside the interpreter, or where a condition does not hold (more than one token,
batch > 1, a tensor-parallel ``reduce``, an ``attn_input``), everything is ``layer_fns``' PyTorch composition.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from executor.gemv import gemv_residual, kernel_runs, launcher, launches_pdl, norm_gemv, swiglu_gemv_residual
from executor.layer_fns import LayerShape, LayerWeights, attention, decoder_layer

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the fallback is layer_fns.attention
    triton = None  # type: ignore[assignment]

BLOCK_SLOTS = 64  # cache slots a program loads per iteration
SLOTS_PER_SPLIT = 256  # a window of W slots is attended by W // SLOTS_PER_SPLIT programs per KV head (>= 1)
MAX_SPLITS = 16
# 8 warps: with 4, the sm_90 build (triton 3.5, ptxas) of the 32/8/128-head kernel spills (255 registers + stack);
# with 8 it takes 203 registers and no stack. Compiled without a GPU; its speed is not measured.
ATTENTION_WARPS = 8


def attention_splits(window: int) -> int:
    """Programs per KV head for a cache window: more for longer windows, so every SM has slots to stream."""
    return max(1, min(MAX_SPLITS, window // SLOTS_PER_SPLIT))


if triton is not None:

    @triton.jit
    def _norm_rope(x, x_rot, scale, scale_rot, cos, sin, eps, HEAD_DIM: tl.constexpr, QK_NORM: tl.constexpr):
        """RMSNorm (Qwen3's q/k norm) and rotate-half RoPE of rows ``x [R, BLOCK_D]`` (float32 holding input-dtype
        values), given also rotated (``x_rot``: rotate_half(x), signed); rounds where ``layer_fns`` rounds."""
        dtype = cos.dtype
        if QK_NORM:
            inv = tl.rsqrt(tl.sum(x * x, axis=1) / HEAD_DIM + eps)[:, None]
            x = ((x * inv).to(dtype).to(tl.float32) * scale[None, :]).to(dtype).to(tl.float32)
            x_rot = ((x_rot * inv).to(dtype).to(tl.float32) * scale_rot[None, :]).to(dtype).to(tl.float32)
        cos32 = cos.to(tl.float32)[None, :]
        sin32 = sin.to(tl.float32)[None, :]
        rotated = (x * cos32).to(dtype).to(tl.float32) + (x_rot * sin32).to(dtype).to(tl.float32)
        return rotated.to(dtype).to(tl.float32)

    @triton.jit
    def _decode_attention_kernel(
        qkv_ptr,
        q_norm_ptr,
        k_norm_ptr,
        cos_ptr,
        sin_ptr,
        pos_ptr,
        k_ptr,
        v_ptr,
        out_ptr,
        part_ptr,
        stats_ptr,
        stride_kh,
        stride_ks,
        stride_vh,
        stride_vs,
        eps,
        scale,
        NUM_HEADS: tl.constexpr,
        KV_HEADS: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        SPLITS: tl.constexpr,
        BLOCKS: tl.constexpr,
        BLOCK_G: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_S: tl.constexpr,
        QK_NORM: tl.constexpr,
        DOT_DTYPE: tl.constexpr,
        PRECISION: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """One (KV head, split) program: see the module docstring. ``DOT_DTYPE``: the products' operand type (the
        cache's on a GPU; float32 under the interpreter, whose tl.dot mishandles bf16: the same exact products)."""
        GROUP: tl.constexpr = NUM_HEADS // KV_HEADS
        HALF: tl.constexpr = HEAD_DIM // 2
        # inductor passes Python floats as float64 scalars; float32 keeps the loop-carried types fixed
        eps = tl.full((), eps, tl.float32)
        scale = tl.full((), scale, tl.float32)
        kvh = tl.program_id(0)
        split = tl.program_id(1)
        if PDL:  # a programmatic dependent launch: wait for the previous kernel's qkv (see executor.gemv)
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        dtype = qkv_ptr.dtype.element_ty
        d = tl.arange(0, BLOCK_D)
        d_ok = d < HEAD_DIM
        rot = tl.where(d < HALF, d + HALF, d - HALF)
        sign = tl.where(d < HALF, -1.0, 1.0)
        cos = tl.load(cos_ptr + d, mask=d_ok, other=0.0).to(dtype)
        sin = tl.load(sin_ptr + d, mask=d_ok, other=0.0).to(dtype)

        # the group's query heads [BLOCK_G, BLOCK_D] and the new K / V rows [1, BLOCK_D], normed and rotated
        g = tl.arange(0, BLOCK_G)
        q_off = (kvh * GROUP + g)[:, None] * HEAD_DIM
        q_ok = (g < GROUP)[:, None] & d_ok[None, :]
        q = tl.load(qkv_ptr + q_off + d[None, :], mask=q_ok, other=0.0).to(tl.float32)
        q_rot = sign[None, :] * tl.load(qkv_ptr + q_off + rot[None, :], mask=q_ok, other=0.0).to(tl.float32)
        q_scale = tl.load(q_norm_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
        q_scale_rot = tl.load(q_norm_ptr + rot, mask=d_ok, other=0.0).to(tl.float32)
        q = _norm_rope(q, q_rot, q_scale, q_scale_rot, cos, sin, eps, HEAD_DIM, QK_NORM)
        k_off = (NUM_HEADS + kvh) * HEAD_DIM
        row_ok = d_ok[None, :]
        k_new = tl.load(qkv_ptr + k_off + d[None, :], mask=row_ok, other=0.0).to(tl.float32)
        k_rot = sign[None, :] * tl.load(qkv_ptr + k_off + rot[None, :], mask=row_ok, other=0.0).to(tl.float32)
        k_scale = tl.load(k_norm_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
        k_scale_rot = tl.load(k_norm_ptr + rot, mask=d_ok, other=0.0).to(tl.float32)
        k_new = _norm_rope(k_new, k_rot, k_scale, k_scale_rot, cos, sin, eps, HEAD_DIM, QK_NORM)
        v_off = (NUM_HEADS + KV_HEADS + kvh) * HEAD_DIM
        v_new = tl.load(qkv_ptr + v_off + d[None, :], mask=row_ok, other=0.0).to(tl.float32)

        # split 0 writes the new slot and starts from it; the others start empty
        pos = tl.load(pos_ptr)
        k_head = k_ptr + kvh * stride_kh
        v_head = v_ptr + kvh * stride_vh
        first = split == 0
        tl.store(k_head + pos * stride_ks + d[None, :], k_new.to(k_ptr.dtype.element_ty), mask=row_ok & first)
        tl.store(v_head + pos * stride_vs + d[None, :], v_new.to(v_ptr.dtype.element_ty), mask=row_ok & first)
        s_new = tl.sum(q * k_new, axis=1) * scale
        m = tl.where(first, s_new, -1.0e30)
        denom = tl.where(first, 1.0, 0.0) + tl.zeros_like(s_new)
        acc = v_new * tl.where(first, 1.0, 0.0) + tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)

        # this split's share of the slots before the position, BLOCK_S at a time (a static trip count); blocks past
        # the position are skipped (one would add exp(-inf) = 0 and keep m: skipping gives the same bits)
        per = tl.cdiv(tl.cdiv(pos, SPLITS), BLOCK_S) * BLOCK_S
        lo = split * per
        hi = tl.minimum(lo + per, pos)
        q_in = q.to(DOT_DTYPE)
        for block in range(0, BLOCKS):
            if lo + block * BLOCK_S < hi:
                slots = lo + block * BLOCK_S + tl.arange(0, BLOCK_S)
                s_ok = slots < hi
                kv_ok = s_ok[:, None] & d_ok[None, :]
                k = tl.load(k_head + slots[:, None] * stride_ks + d[None, :], mask=kv_ok, other=0.0)
                scores = tl.dot(q_in, tl.trans(k.to(DOT_DTYPE)), input_precision=PRECISION) * scale
                scores = tl.where(s_ok[None, :], scores, float("-inf"))
                m_new = tl.maximum(m, tl.max(scores, axis=1))
                alpha = tl.exp(m - m_new)
                p = tl.exp(scores - m_new[:, None])
                denom = denom * alpha + tl.sum(p, axis=1)
                v = tl.load(v_head + slots[:, None] * stride_vs + d[None, :], mask=kv_ok, other=0.0)
                p_in = p.to(v.dtype).to(DOT_DTYPE)
                acc = acc * alpha[:, None] + tl.dot(p_in, v.to(DOT_DTYPE), input_precision=PRECISION)
                m = m_new

        if SPLITS == 1:
            tl.store(
                out_ptr + q_off + d[None, :], (acc / denom[:, None]).to(out_ptr.dtype.element_ty), mask=q_ok
            )
        else:
            part = (kvh * SPLITS + split) * BLOCK_G + g
            tl.store(part_ptr + part[:, None] * BLOCK_D + d[None, :], acc)
            tl.store(stats_ptr + part * 2, m)
            tl.store(stats_ptr + part * 2 + 1, denom)

    @triton.jit
    def _combine_splits_kernel(
        part_ptr,
        stats_ptr,
        out_ptr,
        NUM_HEADS: tl.constexpr,
        KV_HEADS: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        SPLITS: tl.constexpr,
        BLOCK_G: tl.constexpr,
        BLOCK_D: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """One KV head: the splits' partial softmax sums merged in split order."""
        GROUP: tl.constexpr = NUM_HEADS // KV_HEADS
        kvh = tl.program_id(0)
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, BLOCK_D)
        m = tl.full((BLOCK_G,), -1.0e30, dtype=tl.float32)
        for split in range(0, SPLITS):
            m = tl.maximum(m, tl.load(stats_ptr + ((kvh * SPLITS + split) * BLOCK_G + g) * 2))
        denom = tl.zeros((BLOCK_G,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
        for split in range(0, SPLITS):
            part = (kvh * SPLITS + split) * BLOCK_G + g
            weight = tl.exp(tl.load(stats_ptr + part * 2) - m)
            denom += weight * tl.load(stats_ptr + part * 2 + 1)
            acc += weight[:, None] * tl.load(part_ptr + part[:, None] * BLOCK_D + d[None, :])
        q_off = (kvh * GROUP + g)[:, None] * HEAD_DIM
        q_ok = (g < GROUP)[:, None] & (d < HEAD_DIM)[None, :]
        tl.store(out_ptr + q_off + d[None, :], (acc / denom[:, None]).to(out_ptr.dtype.element_ty), mask=q_ok)

    _TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}

    @torch.library.triton_op("spdsim::decode_attention", mutates_args=("k_cache", "v_cache"))
    def _decode_attention_op(
        qkv: torch.Tensor,
        q_norm: torch.Tensor | None,
        k_norm: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        positions: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        num_heads: int,
        eps: float,
        splits: int,
        block_slots: int,
        pdl: bool = False,
    ) -> torch.Tensor:
        """The kernel(s) as a custom op that torch.compile traces and CUDA graphs capture; writes the caches.
        ``pdl``: programmatic dependent launches, by Triton itself (``executor.gemv.launches_pdl``)."""
        _, kv_heads, window, head_dim = k_cache.shape
        block_g = max(16, triton.next_power_of_2(num_heads // kv_heads))  # tl.dot wants >= 16 rows
        block_d = max(16, triton.next_power_of_2(head_dim))
        out = torch.empty(num_heads * head_dim, device=qkv.device, dtype=qkv.dtype)
        part = torch.empty(kv_heads * splits * block_g * block_d, device=qkv.device, dtype=torch.float32)
        stats = torch.empty(kv_heads * splits * block_g * 2, device=qkv.device, dtype=torch.float32)
        sizes = {
            "NUM_HEADS": num_heads,
            "KV_HEADS": kv_heads,
            "HEAD_DIM": head_dim,
            "SPLITS": splits,
            "PDL": pdl,
        }
        launcher(_decode_attention_kernel, qkv.device, pdl)[(kv_heads, splits)](
            qkv,
            qkv if q_norm is None else q_norm,  # unread without the norms (QK_NORM off)
            qkv if k_norm is None else k_norm,
            cos,
            sin,
            positions,
            k_cache,
            v_cache,
            out,
            part,
            stats,
            k_cache.stride(1),
            k_cache.stride(2),
            v_cache.stride(1),
            v_cache.stride(2),
            eps,
            head_dim**-0.5,
            **sizes,
            BLOCKS=triton.cdiv(triton.cdiv(window, splits), block_slots),
            BLOCK_G=block_g,
            BLOCK_D=block_d,
            BLOCK_S=block_slots,
            QK_NORM=q_norm is not None,
            DOT_DTYPE=_TL_DTYPES[qkv.dtype] if qkv.device.type == "cuda" else tl.float32,
            PRECISION="ieee" if qkv.dtype == torch.float32 or qkv.device.type != "cuda" else "tf32",
            num_warps=ATTENTION_WARPS,
        )
        if splits > 1:
            launcher(_combine_splits_kernel, qkv.device, pdl)[(kv_heads,)](
                part, stats, out, **sizes, BLOCK_G=block_g, BLOCK_D=block_d
            )
        return out


def _attention_kernel_fits(
    qkv: torch.Tensor, shape: LayerShape, k_cache: torch.Tensor, v_cache: torch.Tensor
) -> bool:
    """One token of batch 1, caches with contiguous rows in the input dtype, an even head size."""
    return (
        qkv.numel() == qkv.shape[-1]
        and k_cache.shape[0] == 1
        and k_cache.stride(-1) == v_cache.stride(-1) == 1
        and k_cache.dtype == v_cache.dtype == qkv.dtype
        and qkv.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and shape.head_dim % 2 == 0
        and kernel_runs(qkv.device)
    )


def decode_attention(
    qkv: torch.Tensor,
    w: LayerWeights,
    shape: LayerShape,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    splits: int | None = None,
    block_slots: int = BLOCK_SLOTS,
    pdl: bool = False,
) -> torch.Tensor:
    """``layer_fns.attention`` for one query token in one kernel (two for a split window): the same arguments and
    result (``[1, 1, nh hd]``), the same cache writes. ``splits``/``block_slots``: tests' overrides; ``pdl``:
    programmatic dependent launches where they can happen (``executor.gemv.launches_pdl``)."""
    if not _attention_kernel_fits(qkv, shape, k_cache, v_cache):
        return attention(qkv, w, shape, cos, sin, positions, mask, k_cache, v_cache)
    args = (
        qkv.reshape(-1).contiguous(),
        w.q_norm,
        w.k_norm,
        cos.reshape(-1).contiguous(),
        sin.reshape(-1).contiguous(),
        positions.reshape(-1)[:1].contiguous(),
        k_cache,
        v_cache,
        shape.num_heads,
        shape.eps,
        attention_splits(k_cache.shape[2]) if splits is None else splits,
        block_slots,
        launches_pdl(pdl, qkv.device),
    )
    return torch.ops.spdsim.decode_attention(*args).view(1, 1, -1)


def fused_decoder_layer(
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
    *,
    pdl: bool = False,
) -> torch.Tensor:
    """``layer_fns.decoder_layer`` with the same arguments: a one-token step of batch 1 (no ``reduce``, no
    ``attn_input``) as GEMVs with their neighbours folded in and the attention kernel; any other step is
    ``decoder_layer`` itself. ``pdl``: its kernels as programmatic dependent launches (a GPU, not under
    torch.compile): each starts loading weights while the previous one finishes."""
    if not _fused_step(x, reduce, attn_input):
        return decoder_layer(x, w, shape, cos, sin, positions, mask, k_cache, v_cache, reduce, attn_input)
    qkv = norm_gemv(x, w.input_norm, shape.eps, w.qkv, w.qkv_bias, pdl=pdl)
    attn = decode_attention(qkv, w, shape, cos, sin, positions, mask, k_cache, v_cache, pdl=pdl)
    x = gemv_residual(attn, w.o_proj, x, pdl=pdl)
    gate_up = norm_gemv(x, w.post_norm, shape.eps, w.gate_up, pdl=pdl)
    return swiglu_gemv_residual(gate_up, w.down, x, pdl=pdl)


def pdl_one_token_steps(layer: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``layer`` (a compiled ``decoder_layer``) with its one-token steps replaced by :func:`fused_decoder_layer`
    launched eagerly with programmatic dependent launches (Triton kernels only: nothing for inductor to add)."""

    def step(
        x: torch.Tensor,
        *args: torch.Tensor,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        attn_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if _fused_step(x, reduce, attn_input):
            return fused_decoder_layer(x, *args, pdl=True)  # type: ignore[arg-type]
        return layer(x, *args, reduce=reduce, attn_input=attn_input)

    return step


def _fused_step(x: torch.Tensor, reduce: object, attn_input: object) -> bool:
    """A step the fused layer runs: one token of batch 1, no tensor-parallel ``reduce``, no ``attn_input``."""
    return x.shape[0] * x.shape[1] == 1 and reduce is None and attn_input is None
