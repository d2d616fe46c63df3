"""The decode step's batch-1 matmuls three ways: cuBLAS (``F.linear``), inductor (``torch.compile`` with
coordinate-descent tuning, as ``FastModel.compile_layers``) and ``executor.gemv`` (one Triton kernel), on a
model's real layer shapes, each as a fraction of the measured copy bandwidth.

The question before wiring a kernel into the layer: does it stream a weight matrix faster than what the compiled
layer does today? Each variant runs ``--reps`` calls over distinct weight copies (so no call is served from L2)
captured in one CUDA graph (launch cost out), timed by CUDA events over ``--iters`` replays.

    python studies/executor_speed/bench_gemv.py --models qwen3-4b,qwen3-8b --out $OUT/bench_gemv
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from executor.gemv import gemv, gemv_runs_triton  # noqa: E402
from executor.layer_fns import raise_recompile_limits  # noqa: E402
from executor.profile import hardware_info, measure_copy_bandwidth_gbps, software_info  # noqa: E402
from executor.timing import time_callable  # noqa: E402
from spdsim.scenario.presets import get_model  # noqa: E402


def layer_matrices(name: str) -> dict[str, tuple[int, int]]:
    """(rows N, columns K) of each matmul of one decode step of a dense preset, in the fused layout."""
    m = get_model(name)
    q, kv = m.num_attention_heads * m.head_dim, m.num_kv_heads * m.head_dim
    return {
        "qkv": (q + 2 * kv, m.hidden_size),
        "o_proj": (m.hidden_size, q),
        "gate_up": (2 * m.intermediate_size, m.hidden_size),
        "down": (m.hidden_size, m.intermediate_size),
        "lm_head": (m.vocab_size, m.hidden_size),
    }


def graphed(fn, reps: int):
    """``reps`` calls of ``fn(i)`` captured in one CUDA graph; returns its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(reps):  # warm-up: compiles, autotunes, allocates
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(reps):
            fn(i)
    return graph.replay


def bench_matrix(n: int, k: int, reps: int, iters: int, copy_gbps: float) -> dict:
    device = torch.device("cuda")
    weights = [torch.randn(n, k, device=device, dtype=torch.bfloat16) / k**0.5 for _ in range(reps)]
    x = torch.randn(1, 1, k, device=device, dtype=torch.bfloat16)
    reference = F.linear(x.float(), weights[0].float())
    compiled = torch.compile(
        F.linear, dynamic=False, fullgraph=True, options={"coordinate_descent_tuning": True}
    )
    variants = {"cublas": F.linear, "inductor": compiled}
    if gemv_runs_triton(device):
        variants["triton_gemv"] = gemv
    out: dict = {"rows": n, "cols": k, "mbytes": n * k * 2 / 1e6}
    for name, fn in variants.items():
        error = (fn(x, weights[0]).float() - reference).abs().max().item()
        replay = graphed(lambda i, _f=fn: _f(x, weights[i]), reps)
        stats = time_callable(replay, device=device, warmup=3, iters=iters)
        per_call_us = stats.median_us / reps
        gbps = n * k * 2 / (per_call_us * 1e-6) / 1e9
        out[name] = {
            "us": round(per_call_us, 2),
            "gbps": round(gbps, 1),
            "fraction_of_copy": round(gbps / copy_gbps, 4),
            "max_abs_error_vs_fp32": error,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="qwen3-4b,qwen3-8b")
    parser.add_argument("--reps", type=int, default=8, help="calls per graph, each on its own weight copy")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("error: bench_gemv needs a CUDA GPU")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=False)
    raise_recompile_limits()  # one inductor compile of F.linear per shape: 10 shapes passed dynamo's limit of 8
    copy_gbps = measure_copy_bandwidth_gbps("cuda")
    result: dict = {
        "hardware": hardware_info("cuda", copy_gbps),
        "software": software_info(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(),
        "command": " ".join(["python"] + sys.argv),
        "models": {},
    }
    lines = [f"# batch-1 matmuls on {result['hardware']['gpu']} (copy bandwidth {copy_gbps:.0f} GB/s)", ""]
    lines += ["| model | matrix | MB | cuBLAS | inductor | Triton GEMV |", "|---|---|---|---|---|---|"]
    for name in args.models.split(","):
        rows = {}
        for matrix, (n, k) in layer_matrices(name).items():
            rows[matrix] = row = bench_matrix(n, k, args.reps, args.iters, copy_gbps)
            cells = [
                f"{row[v]['fraction_of_copy']:.1%} ({row[v]['us']:.1f} us)" if v in row else "-"
                for v in ("cublas", "inductor", "triton_gemv")
            ]
            lines.append(f"| {name} | {matrix} | {row['mbytes']:.0f} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
            result["models"][name] = rows
            write(out, result, lines)  # after every matrix: a call cut short keeps what it measured
    return 0


def write(out: Path, result: dict, lines: list[str]) -> None:
    (out / "bench_gemv.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "bench_gemv.md").write_text("\n".join([*lines, "", f"{result['software']}, {result['date']}", ""]))


if __name__ == "__main__":
    raise SystemExit(main())
