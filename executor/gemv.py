"""A batch-1 matrix-vector product as one Triton kernel, for the decode step's weight-bound matmuls.

Why (``studies/executor_speed/README.md``): inductor lowers a one-token ``F.linear`` to a Triton reduction fused with
its neighbours; for qwen3-4b's down projection that reads its 50 MB matrix at 45% of the copy bandwidth, which
holds the AR step at about 60%. This kernel streams ``weight`` once, ``BLOCK_N`` rows per program (many programs,
so every SM has loads in flight), each program reducing its rows in a fixed order: no split-K atomics, so the
result is the same every run. ``studies/executor_speed/bench_gemv.py`` measures it against cuBLAS and inductor on
the real layer shapes before anything uses it.

Without Triton (or on the CPU without ``TRITON_INTERPRET=1``) :func:`gemv` is ``F.linear``: the pure-PyTorch
fallback.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the fallback is F.linear
    triton = None  # type: ignore[assignment]


def gemv_runs_triton(device: torch.device) -> bool:
    """Triton is importable and can run here: a GPU, or the CPU interpreter (``TRITON_INTERPRET=1``, tests)."""
    if triton is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:
    _CONFIGS = [
        triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w)
        for n in (2, 4, 8, 16)
        for k in (256, 512, 1024)
        for w in (4, 8)
    ]

    @triton.jit
    def _gemv_kernel(
        x_ptr, w_ptr, y_ptr, N, stride_wn, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr
    ):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        partial = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for block in range(0, tl.cdiv(K, BLOCK_K)):
            cols = block * BLOCK_K + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            x = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            w = tl.load(
                w_ptr + rows[:, None] * stride_wn + cols[None, :],
                mask=row_ok[:, None] & col_ok[None, :],
                other=0.0,
            ).to(tl.float32)
            partial += w * x[None, :]
        tl.store(y_ptr + rows, tl.sum(partial, axis=1).to(y_ptr.dtype.element_ty), mask=row_ok)

    # tuned once per (N, K) in a process, then fixed: every caller of a shape gets the same reduction order
    _gemv_tuned = triton.autotune(configs=_CONFIGS, key=["N", "K"])(_gemv_kernel)

    @torch.library.triton_op("spdsim::gemv", mutates_args=())
    def _gemv_op(row: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The tuned kernel as a custom op that torch.compile traces and CUDA graphs capture."""
        n, k = weight.shape
        out = torch.empty(n, device=row.device, dtype=row.dtype)
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        torch.library.wrap_triton(_gemv_tuned)[grid](row, weight, out, n, weight.stride(0), K=k)
        return out


def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)`` for one row ``x [..., K]`` (leading dimensions of size 1), ``weight [N, K]``: the
    tuned kernel through its op on a GPU, a fixed configuration under the interpreter (which cannot time configs)."""
    if not gemv_runs_triton(x.device) or x.numel() != x.shape[-1] or weight.stride(1) != 1:
        return F.linear(x, weight)
    n, k = weight.shape
    row = x.reshape(k).contiguous()
    if x.device.type == "cuda":
        out = torch.ops.spdsim.gemv(row, weight)
    else:
        out = torch.empty(n, device=x.device, dtype=x.dtype)
        _gemv_kernel[(triton.cdiv(n, 4),)](row, weight, out, n, weight.stride(0), K=k, BLOCK_N=4, BLOCK_K=256)
    return out.reshape(*x.shape[:-1], n)


def decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` for a decoder layer (``decoder_layer(linear=...)``): one-token rows on a GPU through
    :func:`gemv`, everything else (prefill, multi-token verify, the CPU) through ``F.linear``."""
    if x.device.type != "cuda" or x.numel() != x.shape[-1]:
        return F.linear(x, weight, bias)
    out = gemv(x, weight)
    return out if bias is None else out + bias
