"""bench_gemv: the matrices it times are the preset's fused layer shapes; without a GPU it says so in one line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "studies" / "executor_speed" / "bench_gemv.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_gemv", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_matrices_are_the_fused_layer_shapes_of_the_preset() -> None:
    shapes = _module().layer_matrices("qwen3-4b")  # 32 heads, 8 kv heads of 128, hidden 2560, MLP 9728
    assert shapes == {
        "qkv": (32 * 128 + 2 * 8 * 128, 2560),
        "o_proj": (2560, 4096),
        "gate_up": (2 * 9728, 2560),
        "down": (2560, 9728),
        "lm_head": (151936, 2560),
    }


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_without_a_gpu_it_refuses_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_gemv.py", "--out", str(tmp_path / "out")])
    assert _module().main() == 2
    assert capsys.readouterr().out.strip() == "error: bench_gemv needs a CUDA GPU"
    assert not (tmp_path / "out").exists()
