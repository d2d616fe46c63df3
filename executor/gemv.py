"""A batch-1 matrix-vector product as one Triton kernel, for the decode step's weight-bound matmuls, with the
matmuls' small neighbours folded in.

Why (``studies/executor_speed/README.md``): inductor lowers a one-token ``F.linear`` to a Triton reduction fused with
its neighbours; for qwen3-4b's down projection that reads its 50 MB matrix at 45% of the copy bandwidth, which
holds the AR step at about 60%. This kernel streams ``weight`` once, ``BLOCK_N`` rows per program (many programs,
so every SM has loads in flight), each program reducing its rows in a fixed order: no split-K atomics, so the
result is the same every run. ``studies/executor_speed/bench_gemv.py`` measures it against cuBLAS and inductor on
the real layer shapes before anything uses it.

Session 8 on an H100 found the matmuls at 89% of the copy bandwidth but ~400 small kernels a step (norms, SwiGLU,
residual adds) taking ~0.8 ms of the qwen3-4b step. So the one kernel also takes, as constexpr flags, a prologue on
the input row (RMSNorm: :func:`norm_gemv`; SwiGLU of a gate/up row: :func:`swiglu_gemv_residual`) and an epilogue
adding a vector (residual or bias: :func:`gemv_residual`). Each program recomputes the prologue for the columns it
reads (the row has at most ~16k elements and sits in L2), which keeps one launch and a fixed reduction order.
Rounding follows the eager PyTorch composition: the normed / SwiGLU row is rounded to the input dtype where
``rms_norm`` and ``F.silu(gate) * up`` round it, the product is rounded before the vector is added. What differs:
the float32 sum of squares and the matmul's accumulation order (cuBLAS / inductor use theirs), and a bias is added
to the rounded product (``F.linear`` adds it before rounding).

Without Triton (or on the CPU without ``TRITON_INTERPRET=1``, or while torch.compile traces on the CPU) every
function is its plain PyTorch composition: the fallback.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
import torch.nn.functional as F

from executor.layer_fns import rms_norm, swiglu

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


def kernel_runs(device: torch.device) -> bool:
    """A Triton kernel runs for this call: a GPU (also under torch.compile, through the ops), or the interpreter
    outside torch.compile (a compiled CPU graph keeps the PyTorch composition)."""
    if not gemv_runs_triton(device):
        return False
    return device.type == "cuda" or not torch.compiler.is_compiling()


def launcher(kernel: Any, device: torch.device, pdl: bool = False) -> Any:
    """How to launch a jitted kernel: through ``wrap_triton`` on a GPU (inside a ``triton_op``: torch.compile
    traces it, CUDA graphs capture it), directly under the CPU interpreter. ``pdl`` (where :func:`launches_pdl`):
    by Triton itself as a programmatic dependent launch, which inductor's launcher does not make."""
    if pdl:
        return _DependentLaunch(kernel)
    return torch.library.wrap_triton(kernel) if device.type == "cuda" else kernel


class _DependentLaunch:
    """``kernel[grid](...)`` with ``launch_pdl=True``."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel

    def __getitem__(self, grid: Any) -> Any:
        return functools.partial(self.kernel[grid], launch_pdl=True)


if triton is not None:
    _CONFIGS = [
        triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w)
        for n in (2, 4, 8, 16)
        for k in (256, 512, 1024)
        for w in (4, 8)
    ]

    @triton.jit
    def _gemv_kernel(
        x_ptr,
        w_ptr,
        y_ptr,
        norm_ptr,
        add_ptr,
        eps,
        N,
        stride_wn,
        K: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        NORM: tl.constexpr = False,
        SWIGLU: tl.constexpr = False,
        ADD: tl.constexpr = False,
        PDL: tl.constexpr = False,
    ):
        """y = add + W @ f(x): f is RMSNorm(x) * norm (NORM), silu(x[:K]) * x[K:] (SWIGLU) or x itself. PDL: launched
        as a programmatic dependent launch; the first weight block is loaded before waiting for the previous kernel
        (weights are never written), and the next kernel may launch once every program has started."""
        dtype = x_ptr.dtype.element_ty
        eps = tl.full((), eps, tl.float32)  # inductor passes Python floats as float64 scalars
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        cols = tl.arange(0, BLOCK_K)
        # the weight block the loop multiplies next, loaded one iteration ahead (the same products, the same order)
        w_ok = row_ok[:, None] & (cols < K)[None, :]
        w = tl.load(w_ptr + rows[:, None] * stride_wn + cols[None, :], mask=w_ok, other=0.0)
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()  # from here on, the previous kernel's writes (x, add) are visible
        if NORM:
            squares = tl.zeros((BLOCK_K,), dtype=tl.float32)
            for block in range(0, tl.cdiv(K, BLOCK_K)):
                cols = block * BLOCK_K + tl.arange(0, BLOCK_K)
                x = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
                squares += x * x
            inv_rms = tl.rsqrt(tl.sum(squares, axis=0) / K + eps)
        partial = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for block in range(0, tl.cdiv(K, BLOCK_K)):
            cols = block * BLOCK_K + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            x = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            if SWIGLU:  # F.silu(gate) rounds, then the product with up rounds
                up = tl.load(x_ptr + K + cols, mask=col_ok, other=0.0).to(tl.float32)
                x = (x * tl.sigmoid(x)).to(dtype).to(tl.float32)
                x = (x * up).to(dtype).to(tl.float32)
            if NORM:  # rms_norm: normed in float32, rounded, scaled in the input dtype
                scale = tl.load(norm_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
                x = (x * inv_rms).to(dtype).to(tl.float32)
                x = (x * scale).to(dtype).to(tl.float32)
            partial += w.to(tl.float32) * x[None, :]
            ahead = cols + BLOCK_K
            w_ok = row_ok[:, None] & (ahead < K)[None, :]
            w = tl.load(w_ptr + rows[:, None] * stride_wn + ahead[None, :], mask=w_ok, other=0.0)
        y = tl.sum(partial, axis=1).to(y_ptr.dtype.element_ty)
        if ADD:
            y = (y.to(tl.float32) + tl.load(add_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)).to(
                y_ptr.dtype.element_ty
            )
        tl.store(y_ptr + rows, y, mask=row_ok)

    # tuned once per (N, K, prologue, epilogue) in a process, then fixed: every caller of a shape gets the same
    # reduction order
    _gemv_tuned = triton.autotune(configs=_CONFIGS, key=["N", "K", "NORM", "SWIGLU", "ADD", "PDL"])(
        _gemv_kernel
    )

    @torch.library.triton_op("spdsim::gemv", mutates_args=())
    def _gemv_op(
        row: torch.Tensor,
        weight: torch.Tensor,
        norm_weight: torch.Tensor | None = None,
        add: torch.Tensor | None = None,
        eps: float = 0.0,
        swiglu: bool = False,
        pdl: bool = False,
    ) -> torch.Tensor:
        """The kernel as a custom op that torch.compile traces and CUDA graphs capture: tuned on a GPU, a fixed
        configuration under the interpreter (which cannot time configs). ``pdl``: a programmatic dependent launch
        (a GPU outside torch.compile: launched by Triton itself, which inductor's launcher does not do)."""
        n, k = weight.shape
        out = torch.empty(n, device=row.device, dtype=row.dtype)
        # an unused pointer gets the row (never read: its flag is off)
        args = (row, weight, out, row if norm_weight is None else norm_weight, row if add is None else add)
        flags = {"NORM": norm_weight is not None, "SWIGLU": swiglu, "ADD": add is not None, "PDL": pdl}
        if row.device.type == "cuda":
            grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
            launcher(_gemv_tuned, row.device, pdl)[grid](*args, eps, n, weight.stride(0), K=k, **flags)
        else:
            launcher(_gemv_kernel, row.device)[(triton.cdiv(n, 16),)](
                *args, eps, n, weight.stride(0), K=k, BLOCK_N=16, BLOCK_K=256, **flags
            )
        return out


def _one_row(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    norm_weight: torch.Tensor | None = None,
    add: torch.Tensor | None = None,
    eps: float = 0.0,
    swiglu: bool = False,
    pdl: bool = False,
) -> torch.Tensor | None:
    """The kernel's ``add + W @ f(x)`` for one row ``x [..., K]`` (``[..., 2K]`` with ``swiglu``), shaped
    ``[..., N]``; None where the kernel does not run (the caller's PyTorch composition then does)."""
    n, k = weight.shape
    fits = x.numel() == x.shape[-1] == (2 * k if swiglu else k) and weight.stride(1) == 1
    if not fits or not kernel_runs(x.device):
        return None
    row = x.reshape(x.shape[-1]).contiguous()
    flat_add = None if add is None else add.reshape(n).contiguous()
    out = torch.ops.spdsim.gemv(row, weight, norm_weight, flat_add, eps, swiglu, launches_pdl(pdl, x.device))
    return out.reshape(*x.shape[:-1], n)


def launches_pdl(pdl: bool, device: torch.device) -> bool:
    """A programmatic dependent launch is asked for and can happen: a GPU, outside torch.compile."""
    return pdl and device.type == "cuda" and not torch.compiler.is_compiling()


def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)`` for one row ``x [..., K]`` (leading dimensions of size 1), ``weight [N, K]``."""
    out = _one_row(x, weight)
    return F.linear(x, weight) if out is None else out


def norm_gemv(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    pdl: bool = False,
) -> torch.Tensor:
    """``F.linear(rms_norm(x, norm_weight, eps), weight, bias)`` for one row in one kernel (qkv, gate_up)."""
    out = _one_row(x, weight, norm_weight=norm_weight, add=bias, eps=eps, pdl=pdl)
    return F.linear(rms_norm(x, norm_weight, eps), weight, bias) if out is None else out


def gemv_residual(
    x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, pdl: bool = False
) -> torch.Tensor:
    """``residual + F.linear(x, weight)`` for one row in one kernel (o_proj)."""
    out = _one_row(x, weight, add=residual, pdl=pdl)
    return residual + F.linear(x, weight) if out is None else out


def swiglu_gemv_residual(
    gate_up: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, pdl: bool = False
) -> torch.Tensor:
    """``residual + F.linear(F.silu(gate) * up, weight)`` for one row ``gate_up = cat(gate, up)`` in one kernel
    (down)."""
    out = _one_row(gate_up, weight, add=residual, swiglu=True, pdl=pdl)
    return residual + F.linear(swiglu(gate_up), weight) if out is None else out


def decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` for a decoder layer (``decoder_layer(linear=...)``): one-token rows on a GPU through
    :func:`gemv`, everything else (prefill, multi-token verify, the CPU) through ``F.linear``."""
    if x.device.type != "cuda" or x.numel() != x.shape[-1]:
        return F.linear(x, weight, bias)
    out = gemv(x, weight)
    return out if bias is None else out + bias
