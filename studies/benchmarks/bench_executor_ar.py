"""AR decode benchmark of the executor on one GPU: tokens/s and achieved bandwidth against the copy bandwidth.

    python studies/benchmarks/bench_executor_ar.py --model random:qwen3-4b --out-dir studies/benchmarks/results

Measures, in one process: the device copy bandwidth; HF eager decoding (DynamicCache) as the baseline; the fast
decoder eager, with a CUDA graph, and compiled + CUDA graph; per-stage latency for n in {2, 4, 8}; lm_head +
verify. Writes ``bench_executor_ar_<gpu>.md`` and ``.json``. Optionally also the profile bundle (``--profile``)
and the GPU test log are produced by the same call (see ``--profile-out``) to save device start-ups.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from executor.cache import kv_bucket  # noqa: E402
from executor.fastmodel import FastModel  # noqa: E402
from executor.graphs import GraphCache, GraphedStep  # noqa: E402
from executor.hybrid import HYBRID_MODEL_TYPES, HybridModel  # noqa: E402
from executor.models import load_model  # noqa: E402
from executor.profile import (  # noqa: E402
    ProfileGrid,
    build_bundle,
    hardware_info,
    measure_copy_bandwidth_gbps,
    profile_phases,
    software_info,
    write_bundle,
)
from executor.schedules.ar import GenerationConfig, generate_ar  # noqa: E402
from executor.stages import split_layers, uneven_counts  # noqa: E402
from executor.timing import TimingStats, time_callable  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def kv_live_bytes(model: FastModel, kv_len: int) -> int:
    """K/V of the attention layers at ``kv_len``; a Qwen3.5 hybrid adds its DeltaNet states (fp32, read + written)."""
    cfg = model.cfg
    attention_layers = cfg.num_layers - len(getattr(cfg, "linear_layers", ()))
    states = 2 * cfg.state_bytes() if hasattr(cfg, "state_bytes") else 0
    return (
        2 * attention_layers * cfg.num_kv_heads * cfg.head_dim * model.embed_tokens.element_size() * kv_len
        + states
    )


@torch.inference_mode()
def hf_eager_step_us(hf_model: Any, prompt_len: int, steps: int, device: torch.device) -> list[float]:
    """Per-token times of HF eager decoding with its DynamicCache (the baseline figure), host clock + sync."""
    ids = torch.randint(0, hf_model.config.vocab_size, (1, prompt_len), device=device)
    out = hf_model(input_ids=ids, use_cache=True)
    past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(steps):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = hf_model(input_ids=token, past_key_values=past, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e6)
    return sorted(times)


@torch.inference_mode()
def ar_variant(model: FastModel, prompt: list[int], new_tokens: int, use_graphs: bool, kv_len: int) -> dict:
    """One AR run (tokens/s, per-step device time) plus the isolated step replay time at a fixed window."""
    gen = GenerationConfig(max_new_tokens=new_tokens, use_graphs=use_graphs)
    cache = model.new_cache(4096)
    graphs = GraphCache(enabled=use_graphs)
    generate_ar(model, prompt, gen, cache=cache, graphs=graphs)  # warm-up (capture / compile)
    result = generate_ar(model, prompt, gen, cache=cache, graphs=graphs)
    steps = sorted(result.step_us)
    token = torch.tensor([[result.tokens[-1]]], device=model.device)
    position = torch.tensor([kv_len - 1], device=model.device)

    def step(tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        hidden, _ = model.forward_layers(model.embed(tok), pos, 0, model.num_layers, cache, kv_len=kv_len)
        return model.head(hidden)[:, -1].argmax(-1)

    if use_graphs:
        graphed = GraphedStep(step, (token, position))
        fixed = time_callable(graphed.graph.replay, device=model.device, warmup=5, iters=100)
    else:
        fixed = time_callable(lambda: step(token, position), device=model.device, warmup=2, iters=10)
    return {
        "tokens": len(result.tokens),
        "tokens_per_s": result.tokens_per_s,
        "step_median_us": steps[len(steps) // 2],
        "step_p10_us": steps[len(steps) // 10],
        "step_p90_us": steps[(len(steps) * 9) // 10],
        "fixed_kv_len": kv_len,
        "fixed_step_median_us": fixed.median_us,
        "fixed_step_p10_us": fixed.p10_us,
        "fixed_step_p90_us": fixed.p90_us,
        "prompt_len": len(prompt),
        "live_kv_len_mid": len(prompt) + new_tokens // 2,
    }


@torch.inference_mode()
def kernel_breakdown(model: FastModel, kv_len: int, steps: int = 10, top: int = 12) -> dict:
    """Per-kernel device time of the AR step as the timed path runs it (compiled layers when compiled), from the
    torch profiler over `steps` eager calls (the kernels a CUDA graph replays are the same launches)."""
    from torch.profiler import ProfilerActivity, profile

    cache = model.new_cache(4096)
    token = torch.zeros(1, 1, dtype=torch.long, device=model.device)
    position = torch.tensor([kv_len - 1], device=model.device)

    def step() -> torch.Tensor:
        hidden, _ = model.forward_layers(
            model.embed(token), position, 0, model.num_layers, cache, kv_len=kv_len
        )
        return model.head(hidden)[:, -1].argmax(-1)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    kernels: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels.setdefault(event.name, []).append(event.device_time)
    total_us = sum(sum(v) for v in kernels.values()) / steps
    rows = sorted(
        (
            {"kernel": k[:90], "calls_per_step": len(v) / steps, "us_per_step": sum(v) / steps}
            for k, v in kernels.items()
        ),
        key=lambda r: -r["us_per_step"],
    )
    return {
        "kernels_per_step": sum(len(v) for v in kernels.values()) / steps,
        "device_us_per_step": total_us,
        "top": rows[:top],
    }


@torch.inference_mode()
def whole_step_compiled_us(model: FastModel, kv_len: int, mode: str | None) -> dict:
    """The whole AR step (all layers + head + argmax) as ONE compiled graph, CUDA-graph replayed at a fixed window:
    what cross-layer fusion buys over the per-layer compile the schedules use (one compile per window bucket)."""
    model.uncompile_layers()
    cache = model.new_cache(4096)
    token = torch.zeros(1, 1, dtype=torch.long, device=model.device)
    position = torch.tensor([kv_len - 1], device=model.device)

    def step(tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        hidden, _ = model.forward_layers(model.embed(tok), pos, 0, model.num_layers, cache, kv_len=kv_len)
        return model.head(hidden)[:, -1].argmax(-1)

    started = time.perf_counter()
    compiled = torch.compile(step, mode=mode, dynamic=False, fullgraph=True)
    graphed = GraphedStep(compiled, (token, position))
    compile_s = time.perf_counter() - started
    stats = time_callable(graphed.graph.replay, device=model.device, warmup=5, iters=100)
    return {
        "fixed_step_median_us": stats.median_us,
        "p10_us": stats.p10_us,
        "p90_us": stats.p90_us,
        "compile_s": compile_s,
    }


@torch.inference_mode()
def stage_latencies(model: FastModel, kv_len: int) -> list[dict]:
    """Per-stage latency (one token, graph replay) for n in {2, 4, 8}: every stage of each split."""
    cache = model.new_cache(4096)
    hidden = torch.randn(1, 1, model.cfg.hidden_size, device=model.device, dtype=model.dtype)
    position = torch.tensor([kv_len - 1], device=model.device)
    rows = []
    for n in (2, 4, 8):
        layers = model.num_layers
        counts = split_layers(layers, n).layer_counts if layers % n == 0 else uneven_counts(layers, n)
        split = split_layers(layers, layer_counts=counts)
        for s, (start, end) in enumerate(split.ranges):

            def stage(h: torch.Tensor, p: torch.Tensor, _a: int = start, _b: int = end) -> torch.Tensor:
                return model.forward_layers(h, p, _a, _b, cache, kv_len=kv_len)[0]

            graphed = GraphedStep(stage, (hidden, position))
            stats = time_callable(graphed.graph.replay, device=model.device, warmup=5, iters=100)
            rows.append({"n": n, "stage": s, "layers": end - start, **stats.to_dict()})
            del graphed
    return rows


@torch.inference_mode()
def head_verify_latencies(model: FastModel) -> list[dict]:
    rows = []
    for q in (1, 4, 8):
        hidden = torch.randn(1, q, model.cfg.hidden_size, device=model.device, dtype=model.dtype)
        drafted = torch.randint(0, model.cfg.vocab_size, (1, q - 1), device=model.device)

        def verify(h: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
            predicted = model.head(h).argmax(-1)
            return (predicted[:, :-1] == d).to(torch.int32).cumprod(-1).sum(-1)

        graphed = GraphedStep(verify, (hidden, drafted))
        stats = time_callable(graphed.graph.replay, device=model.device, warmup=5, iters=100)
        rows.append({"query_tokens": q, **stats.to_dict()})
    return rows


@torch.inference_mode()
def logit_check(hf_model: Any, model: FastModel, device: torch.device) -> dict[str, float]:
    """Relative L2 error against HF in float32 on a 64-token prompt: the fast model's and HF's own bf16 error."""
    ids = torch.randint(0, model.cfg.vocab_size, (1, 64), device=device)
    hf_low = hf_model(input_ids=ids).logits.float()
    fast = model(ids, torch.arange(64, device=device), model.new_cache(256), kv_len=256)
    low_dtype = next(hf_model.parameters()).dtype
    ref = hf_model.float()(input_ids=ids).logits.float()
    hf_model.to(low_dtype)

    def rel(x: torch.Tensor) -> float:
        return float((x - ref).norm() / ref.norm())

    return {
        "fast_vs_hf_fp32": rel(fast),
        "hf_bf16_vs_hf_fp32": rel(hf_low),
        "fast_vs_hf_bf16": float((fast - hf_low).norm() / hf_low.norm()),
    }


def markdown(report: dict) -> str:
    env, cfg = report["environment"], report["config"]
    lines = [
        f"# Executor AR decode benchmark: {cfg['model']} ({cfg['dtype']}, batch 1) on {env['gpu']}",
        "",
        f"Date {env['date']}; GPU {env['gpu']}, driver {env['driver']}; torch {env['torch']}, "
        f"transformers {env['transformers']}, CUDA {env['cuda']}, Python {env['python']}.",
        f"Command: `{cfg['command']}`",
        "",
        f"Measured device copy bandwidth (read + write): **{report['copy_bandwidth_gbps']:.0f} GB/s**. "
        f"Weight bytes per decode step: {report['weight_bytes'] / 1e9:.3f} GB.",
        "",
        "| variant | step median (ms) | p10-p90 (ms) | tokens/s (wall, incl. prefill) | achieved GB/s | % of copy BW |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["ar"]:
        if "error" in row:
            lines.append(f"| {row['variant']} | failed: {row['error']} | | | | |")
            continue
        lines.append(
            f"| {row['variant']} | {row['step_ms']:.3f} | {row['p10_ms']:.3f}-{row['p90_ms']:.3f} | "
            f"{row.get('tokens_per_s', float('nan')):.1f} | {row['achieved_gbps']:.0f} | {row['fraction_of_copy'] * 100:.1f}% |"
        )
    lines += [
        "",
        "Step time: device time of one decode step (CUDA events), median over the generated tokens at live KV "
        "length prompt + generated; for the fast variants, the fixed-window replay time at kv_len "
        f"{report['fixed_kv_len']} is in the JSON. Achieved bandwidth = (weights + live KV bytes) / step time.",
        "",
        "Logits on a 64-token prompt, relative L2 error against HF in float32: "
        + ", ".join(f"{k} {v:.2e}" for k, v in report.get("logit_rel_err", {}).items())
        + " (the fast model's bf16 error is of the size of HF's own).",
        "",
        f"## Per-stage latency (one token, CUDA graph, kv_len {report['fixed_kv_len']}; "
        f"layers as in '{report.get('stage_variant', '')}')",
        "",
        "| n | stage | layers | median (us) | p10 (us) | p90 (us) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['n']} | {r['stage']} | {r['layers']} | {r['median_us']:.1f} | {r['p10_us']:.1f} | {r['p90_us']:.1f} |"
        for r in report.get("stages", [])
    ]
    lines += ["", "## lm_head + greedy verify (final norm, lm_head, argmax, compare)", ""]
    lines += ["| query tokens | median (us) | p10 (us) | p90 (us) |", "|---|---|---|---|"]
    lines += [
        f"| {r['query_tokens']} | {r['median_us']:.1f} | {r['p10_us']:.1f} | {r['p90_us']:.1f} |"
        for r in report.get("head_verify", [])
    ]
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict, hardware: dict, out_dir: Path) -> Path:
    """Rewritten after every variant, so a run cut short still leaves its figures."""
    gpu_tag = hardware["name"].replace("nvidia-", "")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"bench_executor_ar_{gpu_tag}.json").write_text(
        json.dumps(report, indent=1, default=str) + "\n"
    )
    path = out_dir / f"bench_executor_ar_{gpu_tag}.md"
    path.write_text(markdown(report))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:qwen3-4b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--hf-steps", type=int, default=24)
    parser.add_argument("--out-dir", default=str(ROOT / "studies" / "benchmarks" / "results"))
    parser.add_argument("--compile-modes", default="default", help="comma list; '' to skip compiled variants")
    parser.add_argument("--profile-out", default="", help="also write the profile bundle to this path")
    parser.add_argument("--profile-spec-layers", default="1,2,3", help="SPD drafter depths L_s of the bundle")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument(
        "--whole-step", action="store_true", help="also time the whole step compiled as one graph"
    )
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    report: dict[str, Any] = {"notes": []}
    log("copy bandwidth")
    copy_gbps = measure_copy_bandwidth_gbps(device, nbytes=(1 << 30) if device.type == "cuda" else 1 << 26)
    report["copy_bandwidth_gbps"] = copy_gbps
    hardware = hardware_info(device, copy_gbps)
    report["environment"] = {
        **hardware,
        **software_info(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(),
    }
    report["config"] = {
        "model": args.model,
        "dtype": args.dtype,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "command": " ".join(["python"] + sys.argv),
    }
    log(f"{hardware['gpu']}: copy {copy_gbps:.0f} GB/s; loading {args.model}")
    loaded = load_model(args.model, device=device, dtype=args.dtype, seed=0)
    hybrid = loaded.hf_model.config.model_type in HYBRID_MODEL_TYPES
    model = (HybridModel if hybrid else FastModel).from_hf(loaded.hf_model, max_seq_len=4096)
    weight_bytes = model.cfg.decode_weight_bytes(model.embed_tokens.element_size())
    report["weight_bytes"] = weight_bytes
    ar_rows: list[dict] = []
    mid_kv = args.prompt_len + args.new_tokens // 2
    fixed_kv = kv_bucket(args.prompt_len + args.new_tokens, 4096)
    report["fixed_kv_len"] = fixed_kv

    def add_row(variant: str, step_us: float, p10_us: float, p90_us: float, extra: dict) -> None:
        total = weight_bytes + kv_live_bytes(model, mid_kv)
        gbps = total / (step_us * 1e-6) / 1e9
        ar_rows.append(
            {
                "variant": variant,
                "step_ms": step_us / 1e3,
                "p10_ms": p10_us / 1e3,
                "p90_ms": p90_us / 1e3,
                "achieved_gbps": gbps,
                "fraction_of_copy": gbps / copy_gbps,
                **extra,
            }
        )
        log(
            f"{variant}: {step_us / 1e3:.3f} ms/step, {gbps:.0f} GB/s = {gbps / copy_gbps * 100:.1f}% of copy"
        )

    try:
        report["logit_rel_err"] = logit_check(loaded.hf_model, model, device)
        log(f"logit rel err {report['logit_rel_err']}")
    except Exception as exc:  # noqa: BLE001 - a benchmark reports every failure and goes on
        report["notes"].append(f"logit check failed: {exc!r}")
    if not args.skip_hf and device.type == "cuda":
        try:
            times = hf_eager_step_us(loaded.hf_model, args.prompt_len, args.hf_steps, device)
            stats = TimingStats.from_samples(times)
            add_row(
                "HF eager + DynamicCache",
                stats.median_us,
                stats.p10_us,
                stats.p90_us,
                {"tokens_per_s": 1e6 / stats.median_us},
            )
        except Exception as exc:  # noqa: BLE001
            ar_rows.append({"variant": "HF eager + DynamicCache", "error": repr(exc)})
    hf_model = loaded.hf_model
    del loaded, hf_model
    torch.cuda.empty_cache() if device.type == "cuda" else None

    prompt = torch.randint(0, model.cfg.vocab_size, (args.prompt_len,)).tolist()
    variants = [("fast eager (static cache)", False, None), ("fast + CUDA graph", True, None)]
    variants += [(f"fast + compile({m}) + CUDA graph", True, m) for m in args.compile_modes.split(",") if m]
    for name, graphs, mode in variants:
        try:
            torch._dynamo.reset()
            model.uncompile_layers()
            started = time.perf_counter()
            if mode is not None:
                base_mode, *extras = mode.split("+")
                # "+cdt": inductor's coordinate-descent tuning of the generated kernels' launch configs;
                # "+gemv": one-token matmuls through executor.gemv's Triton kernel; "+fused": one-token steps through
                # executor.fused_decode's layer (GEMVs with norms / SwiGLU / residuals folded in, one attention kernel)
                torch._inductor.config.coordinate_descent_tuning = "cdt" in extras
                # "+pdl" (with "+fused"): that layer uncompiled, its kernels as programmatic dependent launches
                fused = {"fused": True, "pdl": "pdl" in extras} if "fused" in extras else {}
                model.compile_layers(
                    None if base_mode == "default" else base_mode, gemv="gemv" in extras, **fused
                )
            new_tokens = args.new_tokens if graphs else min(args.new_tokens, 16)
            row = ar_variant(model, prompt, new_tokens, graphs, fixed_kv)
            row["setup_and_run_s"] = time.perf_counter() - started
            add_row(name, row["step_median_us"], row["step_p10_us"], row["step_p90_us"], row)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            ar_rows.append({"variant": name, "error": repr(exc)[:300]})
        report["ar"] = ar_rows
        write_report(report, hardware, Path(args.out_dir))
    report["ar"] = ar_rows
    if device.type == "cuda":
        try:
            report["kernel_breakdown"] = kernel_breakdown(model, fixed_kv)
            log(f"kernels per step {report['kernel_breakdown']['kernels_per_step']:.0f}")
        except Exception as exc:  # noqa: BLE001
            report["notes"].append(f"kernel breakdown failed: {exc!r}"[:300])
        if args.whole_step:
            try:
                torch._dynamo.reset()
                whole = whole_step_compiled_us(model, fixed_kv, None)
                total = weight_bytes + kv_live_bytes(model, fixed_kv)
                whole["fraction_of_copy"] = total / (whole["fixed_step_median_us"] * 1e-6) / 1e9 / copy_gbps
                report["whole_step_compiled"] = whole
                log(f"whole-step compile: {whole}")
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                report["notes"].append(f"whole-step compile failed: {exc!r}"[:300])
            model.uncompile_layers()
            model.compile_layers()
    report["stage_variant"] = next((r["variant"] for r in reversed(ar_rows) if "error" not in r), "")
    try:
        report["stages"] = stage_latencies(model, fixed_kv)
        report["head_verify"] = head_verify_latencies(model)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        report["notes"].append(f"stage/head timing failed: {exc!r}"[:300])
    gpu_tag = hardware["name"].replace("nvidia-", "")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"bench_executor_ar_{gpu_tag}.json").write_text(
        json.dumps(report, indent=1, default=str) + "\n"
    )
    (out_dir / f"bench_executor_ar_{gpu_tag}.md").write_text(markdown(report))
    log(f"wrote {out_dir}/bench_executor_ar_{gpu_tag}.md")
    print(markdown(report))

    if args.profile_out:
        log("profile bundle")
        grid = (
            ProfileGrid(
                spec_layers=tuple(int(x) for x in args.profile_spec_layers.split(",")),
                kv_lens=(256, 1024, 4096),
                iters=30,
            )
            if device.type == "cuda"
            else ProfileGrid(kv_lens=(256,), query_tokens=(1,), iters=3)
        )
        phases = profile_phases(model, grid, progress=log)
        bundle = build_bundle(
            model_name=args.model,
            model=model,
            phases=phases,
            hardware=hardware,
            source=f"executor/profile.py via studies/benchmarks/bench_executor_ar.py {args.model}",
        )
        write_bundle(args.profile_out, bundle)
        log(f"wrote {args.profile_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
