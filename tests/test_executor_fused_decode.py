"""executor/fused_decode.py: the decode-attention kernel and the fused one-token layer against layer_fns' PyTorch
composition, on the CPU (fallbacks; kernels under Triton's interpreter) and on a GPU."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from executor.fused_decode import attention_splits, decode_attention, fused_decoder_layer
from executor.gemv import gemv_runs_triton
from executor.layer_fns import LayerShape, LayerWeights, attention, decoder_layer, step_inputs
from tests.triton_interpreter import run_interpreted, written_arguments

# (heads, KV heads, head size, window, position, q/k norms, splits, slots a block): several blocks with a masked
# last one; splits combined; position 0 (no slot before it) without norms (Llama); a group of 3 and a head size of
# 12 (no powers of two: padded tiles); one head a group with the default splits and blocks
CPU_CASES = (
    (4, 2, 16, 48, 40, True, 1, 16),
    (4, 2, 16, 48, 40, True, 3, 16),
    (4, 2, 16, 64, 0, False, 2, 16),
    (6, 2, 12, 40, 33, True, 2, 16),
    (4, 4, 16, 256, 200, False, None, 64),
)


def _attention_operands(
    nh: int, kv: int, hd: int, window: int, position: int, qk_norm: bool, device: str, seed: int = 0
) -> dict[str, Any]:
    """A qkv row, q/k norm weights, RoPE rows, a cache window (a view of a larger cache, as the layers get it)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def rand(*shape: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device) * scale + shift

    angles = rand(1, hd // 2, scale=3.0)
    angles = torch.cat((angles, angles), dim=-1)
    positions = torch.tensor([position], device=device)
    slots = torch.arange(window, device=device)
    return {
        "qkv": rand(1, 1, (nh + 2 * kv) * hd, scale=2.0),
        "q_norm": rand(hd, scale=0.1, shift=1.0) if qk_norm else None,
        "k_norm": rand(hd, scale=0.1, shift=1.0) if qk_norm else None,
        "cos": angles.cos(),
        "sin": angles.sin(),
        "positions": positions,
        "mask": torch.where(slots[None, :] <= positions[:, None], 0.0, float("-inf")),
        "k_cache": rand(1, kv, window + 8, hd),
        "v_cache": rand(1, kv, window + 8, hd),
    }


def _cast(ops: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """The layer's tensors in ``dtype``; positions, RoPE rows and the mask stay as the step inputs make them."""
    keep = ("positions", "cos", "sin", "mask")
    return {n: t if t is None or n in keep else t.to(dtype) for n, t in ops.items()}


def _attend(fn, ops: dict[str, Any], shape: LayerShape, dtype: torch.dtype, window: int, **kw):
    """``fn`` (the kernel's or layer_fns' attention) on ``ops`` cast to ``dtype``: its output and the caches."""
    cast = _cast(ops, dtype)
    w = LayerWeights(None, None, None, cast["q_norm"], cast["k_norm"], None, None, None, None)
    k_cache, v_cache = cast["k_cache"].clone(), cast["v_cache"].clone()
    out = fn(
        cast["qkv"],
        w,
        shape,
        cast["cos"],
        cast["sin"],
        cast["positions"],
        cast["mask"],
        k_cache[:, :, :window],
        v_cache[:, :, :window],
        **kw,
    )
    return out, k_cache, v_cache


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_torch_compile_sees_the_attention_kernels_write_only_the_caches_and_their_outputs() -> None:
    """Lowered for sm_90 on the CPU (qwen3-4b's heads, bf16 and float32, one split and several): the kernels
    compile, and torch.compile's analysis finds them writing the caches and outputs alone (no clone of qkv)."""
    pytest.importorskip("triton")
    import triton.language as tl

    from executor.fused_decode import _combine_splits_kernel, _decode_attention_kernel

    nh, kv, hd = 32, 8, 128
    for dtype, tl_dtype, splits in ((torch.bfloat16, tl.bfloat16, 1), (torch.float32, tl.float32, 4)):
        cache = torch.zeros(1, kv, 512, hd, dtype=dtype)[:, :, :256]
        kwargs: dict[str, Any] = {
            **{n: torch.zeros(nh * hd, dtype=dtype) for n in ("qkv_ptr", "out_ptr")},
            **{n: torch.ones(hd, dtype=dtype) for n in ("q_norm_ptr", "k_norm_ptr")},
            **{n: torch.zeros(hd) for n in ("cos_ptr", "sin_ptr", "part_ptr", "stats_ptr")},
            **{"pos_ptr": torch.tensor([5]), "k_ptr": cache, "v_ptr": cache.clone()},
            **{"stride_kh": cache.stride(1), "stride_ks": hd, "stride_vh": cache.stride(1), "stride_vs": hd},
            **{"eps": 1e-6, "scale": hd**-0.5, "NUM_HEADS": nh, "KV_HEADS": kv, "HEAD_DIM": hd},
            **{"SPLITS": splits, "BLOCKS": 4, "BLOCK_G": 16, "BLOCK_D": hd, "BLOCK_S": 64, "QK_NORM": True},
            **{
                "DOT_DTYPE": tl_dtype,
                "PRECISION": "ieee" if dtype == torch.float32 else "tf32",
                "PDL": False,
            },
        }
        outputs = ["out_ptr"] if splits == 1 else ["part_ptr", "stats_ptr"]
        assert written_arguments(_decode_attention_kernel, kwargs) == sorted(["k_ptr", "v_ptr", *outputs])
    combine = {"part_ptr": torch.zeros(8), "stats_ptr": torch.zeros(8), "out_ptr": torch.zeros(8)}
    combine |= {
        "NUM_HEADS": nh,
        "KV_HEADS": kv,
        "HEAD_DIM": hd,
        "SPLITS": 4,
        "BLOCK_G": 16,
        "BLOCK_D": hd,
        "PDL": False,
    }
    assert written_arguments(_combine_splits_kernel, combine) == ["out_ptr"]
    # the PDL variants lower too (launched outside torch.compile only: their inline asm is opaque to the analysis,
    # which then counts every tensor argument written)
    for kernel, arguments in ((_decode_attention_kernel, kwargs), (_combine_splits_kernel, combine)):
        tensors = sorted(name for name, value in arguments.items() if isinstance(value, torch.Tensor))
        assert written_arguments(kernel, {**arguments, "PDL": True}) == tensors


def check_decode_attention(
    nh: int,
    kv: int,
    hd: int,
    window: int,
    position: int,
    qk_norm: bool,
    splits: int | None,
    block_slots: int,
    device: str = "cpu",
) -> dict[str, float]:
    """Float32: layer_fns.attention's output and cache writes. Bf16: the same cache bits up to one rounding, the
    same bits on a second call; returns the bf16 relative errors against float32 (kernel, eager)."""
    shape = LayerShape(nh, kv, hd, 1e-6)
    ops = _attention_operands(nh, kv, hd, window, position, qk_norm, device)
    kw = {"splits": splits, "block_slots": block_slots}
    got, got_k, got_v = _attend(decode_attention, ops, shape, torch.float32, window, **kw)
    ref, ref_k, ref_v = _attend(attention, ops, shape, torch.float32, window)
    assert got.shape == ref.shape == (1, 1, nh * hd)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(got_k, ref_k, rtol=1e-6, atol=1e-6) and torch.equal(got_v, ref_v)
    untouched = torch.ones(window + 8, dtype=torch.bool, device=device)
    untouched[position] = False
    assert torch.equal(got_k[:, :, untouched], ops["k_cache"][:, :, untouched])

    low = torch.bfloat16
    got, got_k, got_v = _attend(decode_attention, ops, shape, low, window, **kw)
    again = _attend(decode_attention, ops, shape, low, window, **kw)
    assert all(torch.equal(a, b) for a, b in zip((got, got_k, got_v), again, strict=True))
    eager, eager_k, eager_v = _attend(attention, ops, shape, low, window)
    assert torch.allclose(got_k.float(), eager_k.float(), rtol=2**-7, atol=2**-7)
    assert torch.equal(got_v, eager_v)
    reference, _, _ = _attend(attention, _cast(ops, low), shape, torch.float32, window)
    return {"kernel": _rel(got, reference), "eager": _rel(eager, reference)}


def test_without_triton_on_the_cpu_the_attention_and_the_layer_are_layer_fns() -> None:
    if gemv_runs_triton(torch.device("cpu")):
        pytest.skip("TRITON_INTERPRET is set: the interpreter runs the kernels")
    ops = _attention_operands(4, 2, 16, 48, 40, True, "cpu")
    shape = LayerShape(4, 2, 16, 1e-6)
    got = _attend(decode_attention, ops, shape, torch.bfloat16, 48)
    ref = _attend(attention, ops, shape, torch.bfloat16, 48)
    assert all(torch.equal(a, b) for a, b in zip(got, ref, strict=True))
    fused = _decode_states("random:tiny-qwen3", torch.bfloat16, fused_decoder_layer, 2, "cpu")
    plain = _decode_states("random:tiny-qwen3", torch.bfloat16, decoder_layer, 2, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(fused, plain, strict=True))


def test_decode_attention_under_the_cpu_interpreter() -> None:
    run_interpreted(
        """
        from tests.test_executor_fused_decode import CPU_CASES, check_decode_attention
        for case in CPU_CASES:
            errors = check_decode_attention(*case)
            assert errors["kernel"] <= 1.5 * errors["eager"] + 1e-3, (case, errors)
        """
    )


def test_attention_splits_grow_with_the_window() -> None:
    assert [attention_splits(w) for w in (64, 256, 512, 4096, 65536)] == [1, 1, 2, 16, 16]


def _decode_states(spec: str, dtype: torch.dtype, layer, steps: int, device: str) -> list[torch.Tensor]:
    """Teacher-forced one-token steps of a tiny model through ``layer`` after an eager prefill: each step's final
    hidden state, then every layer's K and V cache (float32)."""
    from executor.fastmodel import FastModel
    from executor.models import load_model
    from executor.schedules.base import forward_tokens

    fast = FastModel.from_hf(load_model(spec, seed=5).hf_model, device=device, dtype=dtype, max_seq_len=128)
    fast.layer_functions = lambda _tokens: (layer, step_inputs)  # type: ignore[method-assign]
    tokens = list(range(3, 15 + steps))
    with torch.inference_mode():
        cache = fast.new_cache()
        forward_tokens(fast, tokens[:12], 0, cache)
        states = [forward_tokens(fast, [t], 12 + i, cache)[0].float() for i, t in enumerate(tokens[12:])]
    return states + [c.float() for c in cache.keys + cache.values]


def check_fused_layer(spec: str, steps: int = 2, device: str = "cpu") -> dict[str, float]:
    """Every layer fused vs ``decoder_layer``: the largest relative difference of the hidden states and caches in
    float32; in bf16, the fused and the plain layer's largest relative error against float32."""

    def worst(got: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
        return max(_rel(a, b) for a, b in zip(got, ref, strict=True))

    reference = _decode_states(spec, torch.float32, decoder_layer, steps, device)
    return {
        "float32": worst(_decode_states(spec, torch.float32, fused_decoder_layer, steps, device), reference),
        "bf16 fused": worst(
            _decode_states(spec, torch.bfloat16, fused_decoder_layer, steps, device), reference
        ),
        "bf16 plain": worst(_decode_states(spec, torch.bfloat16, decoder_layer, steps, device), reference),
    }


def test_the_fused_layer_under_the_cpu_interpreter() -> None:
    """Qwen3 (q/k norms, tied embeddings) and Llama (llama3 RoPE, no norms): float32 as close as float32 rounding;
    bf16 as close to float32 as the plain layer's bf16, hidden states and cache writes."""
    run_interpreted(
        """
        from tests.test_executor_fused_decode import check_fused_layer
        for spec in ("random:tiny-qwen3", "random:tiny-llama"):
            errors = check_fused_layer(spec)
            assert errors["float32"] < 1e-5, (spec, errors)
            assert errors["bf16 fused"] <= 1.5 * errors["bf16 plain"], (spec, errors)
        """
    )


def test_steps_the_kernels_do_not_serve_are_decoder_layer() -> None:
    """Three query tokens, or an attention input (EAGLE-3): ``decoder_layer`` itself, also where Triton runs."""
    from executor.fastmodel import FastModel
    from executor.models import load_model

    fast = FastModel.from_hf(load_model("random:tiny-qwen3", seed=5).hf_model, max_seq_len=64)
    w, h = fast.layer_weights(0), fast.cfg.hidden_size
    x = torch.randn(1, 3, h, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(5, 8)
    results = []
    for layer in (fused_decoder_layer, decoder_layer):
        cache = fast.new_cache()
        cos, sin, mask = step_inputs(fast.rope_cos, fast.rope_sin, positions, 64, cache.lengths[:1])
        args = (x, w, fast.shape, cos, sin, positions, mask, cache.keys[0], cache.values[0])
        results.append((layer(*args), layer(*args, attn_input=x), cache.keys[0]))
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_attention_on_the_gpu_on_qwen3_4b_shapes() -> None:
    """32 query heads over 8 KV heads of 128: one program a head (window 256), 16 splits (4096), position 5 of
    4096 (most splits empty); against float32 the kernel's bf16 error is of the size of eager bf16's."""
    pytest.importorskip("triton")
    for window, position in ((256, 200), (4096, 3000), (4096, 5)):
        errors = check_decode_attention(32, 8, 128, window, position, True, None, 64, "cuda")
        assert errors["kernel"] <= 1.5 * errors["eager"] + 1e-4, (window, position, errors)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_fused_layer_on_the_gpu() -> None:
    pytest.importorskip("triton")
    for spec in ("random:tiny-qwen3", "random:tiny-llama"):
        errors = check_fused_layer(spec, device="cuda")
        assert errors["float32"] < 1e-5, (spec, errors)
        assert errors["bf16 fused"] <= 1.5 * errors["bf16 plain"], (spec, errors)


def test_pdl_steps_route_what_the_fused_layer_cannot_take_to_the_compiled_layer() -> None:
    """More than one token, a ``reduce`` or an ``attn_input`` (given by keyword, as the SPD drafter layer does)
    reach the wrapped layer unchanged; a one-token step does not."""
    from executor.fused_decode import pdl_one_token_steps

    calls: list[tuple[int, object]] = []

    def layer(
        x: torch.Tensor, *args: object, reduce: object = None, attn_input: object = None
    ) -> torch.Tensor:
        calls.append((x.shape[1], attn_input))
        return x

    step = pdl_one_token_steps(layer)
    rows, extra = torch.zeros(1, 3, 4), torch.ones(1, 1, 4)
    assert step(rows, *[None] * 8) is rows
    assert step(torch.zeros(1, 1, 4), *[None] * 8, attn_input=extra).shape == (1, 1, 4)
    assert calls == [(3, None), (1, extra)]
