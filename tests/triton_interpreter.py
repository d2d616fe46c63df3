"""Triton kernels without a GPU: run a test snippet under Triton's CPU interpreter (``TRITON_INTERPRET=1``, read
when kernels are defined, so in a fresh process) with GPU-like float32 -> bfloat16 rounding; and lower a kernel for
an sm_90 target to ask torch.compile's analysis which arguments it writes.

Why the rounding: triton 3.5's interpreter truncates on that cast, and its round-to-nearest-even mode carries no
overflow into the exponent (1.99 -> 1.0). A GPU rounds to nearest even; :func:`round_bf16_like_a_gpu` makes the
interpreter do the same, so bf16 tests can check where a kernel rounds, not the interpreter's rounding.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def round_bf16_like_a_gpu() -> None:
    """Patch the interpreter's float32 -> bfloat16 cast to round to nearest even (inside the interpreted process)."""
    import numpy as np
    import triton.language as tl
    import triton.runtime.interpreter as interpreter

    builder = interpreter.InterpreterBuilder
    cast = builder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32).astype(np.uint64)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            return interpreter.TensorHandle(rounded.reshape(np.shape(src.data)), tl.bfloat16)
        return cast(self, src, dst_type)

    builder.cast_impl = cast_impl


def run_interpreted(body: str, timeout: int = 600) -> None:
    """Run ``body`` (Python, dedented) in a fresh interpreter process; it passes when it prints ``ok``."""
    pytest.importorskip("triton")
    script = "from tests.triton_interpreter import round_bf16_like_a_gpu\nround_bf16_like_a_gpu()\n"
    script += textwrap.dedent(body) + '\nprint("ok")\n'
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def written_arguments(kernel: Any, kwargs: dict[str, Any]) -> list[str]:
    """The arguments torch.compile's analysis of the kernel's TTIR (lowered for an H100, sm_90, without a GPU)
    finds written. A kernel it cannot analyse counts as writing every tensor argument, which makes torch.compile
    clone them all on every call (weights, caches): this catches that, and front-end compile errors, on the CPU.
    The kernel is lowered twice: with Python floats as float32 scalars (Triton's own launch) and as float64 ones
    (how inductor passed them in session 9, which broke a loop-carried float32 type)."""
    pytest.importorskip("triton")
    import triton.runtime.jit as jit

    mangle = jit.mangle_type
    answers = []
    for float_type in ("fp32", "fp64"):
        jit.mangle_type = lambda arg, specialize=False, t=float_type: (  # type: ignore[assignment]
            t if isinstance(arg, float) else mangle(arg, specialize)
        )
        try:
            answers.append(_written_arguments(kernel, kwargs))
        finally:
            jit.mangle_type = mangle
    assert answers[0] == answers[1], answers
    return answers[0]


def _written_arguments(kernel: Any, kwargs: dict[str, Any]) -> list[str]:
    import triton
    from triton.backends.compiler import GPUTarget

    wrap = pytest.importorskip("torch._higher_order_ops.triton_kernel_wrap")
    analyse = getattr(wrap, "identify_accessed_tensors", None)
    if analyse is None:
        pytest.skip("this torch has no identify_accessed_tensors")

    class _Sm90:
        def get_current_target(self) -> GPUTarget:
            return GPUTarget("cuda", 90, 32)

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET is set: the kernels are interpreted, not lowered")
    drivers = triton.runtime.driver
    previous = drivers._active  # None: the default driver, created when first asked (there is none on a CPU)
    drivers.set_active(_Sm90())
    try:
        return sorted(dep.name for dep in analyse(kernel, kwargs, {}).read_writes.writes)
    finally:
        drivers.set_active(previous)
