"""Single-process SPD benchmark on one GPU: the graphed fast path against compiled + graphed AR.

    python studies/benchmarks/bench_spd.py --model random:qwen3-4b --stages 4 --alpha 0.8 --new-tokens 256 --prompts 4 \
        --out studies/benchmarks/results/bench_spd_h200.json

Measures, in one process: the device copy bandwidth (a large tensor copy); the AR step (compiled layers, one CUDA
graph) and AR tokens/s; SPD (compiled layers; stage, drafter and verify steps as CUDA graphs; synthetic acceptance
α) tokens/s, realised α and the speedup over AR; the SPD cycle time per state (median of the device time between
consecutive cycle starts, events on the decode stream); per-stage step time and its fraction of the copy bandwidth
(the stage's weight bytes / step time against the measured copy bandwidth); the drafter and verify phase times.
Writes one JSON (GPU name, torch version, date included). CPU smoke run:

    python studies/benchmarks/bench_spd.py --device cpu --model random:tiny-qwen3 --new-tokens 16 --prompts 1 --out x.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from executor.cache import kv_bucket  # noqa: E402
from executor.graphs import GraphedStep  # noqa: E402
from executor.models import load_fast_model  # noqa: E402
from executor.profile import measure_copy_bandwidth_gbps  # noqa: E402
from executor.schedules import run_method  # noqa: E402
from executor.schedules import spd as spd_module  # noqa: E402
from executor.schedules.ar import decode_step_fn  # noqa: E402
from executor.stages import split_layers  # noqa: E402
from executor.timing import time_callable  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="random:qwen3-4b")
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.8)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--spec-layers", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on the CPU")
    parser.add_argument("--no-compile", action="store_true", help="eager layers (graphs still captured)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed first-prompt decode per method (default: 1 on a GPU)",
    )
    parser.add_argument("--out", default="studies/benchmarks/results/bench_spd.json")
    return parser.parse_args(argv)


def prompt_set(count: int, length: int, vocab: int, seed: int = 0) -> list[tuple[str, list[int]]]:
    rng = np.random.default_rng(seed)
    return [(f"p{i}", rng.integers(0, vocab, length).tolist()) for i in range(count)]


def device_info(device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


class CycleClock:
    """Start of every SPD cycle: a CUDA event on the decode stream (after the previous cycle's join), or the host
    clock on the CPU; consecutive starts give the cycle's time (the last cycle of a prompt is not timed)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[int, int, str, Any]] = []  # (prompt serial, cycle, state, event or seconds)
        self.prompt = 0
        self._next_cycle = spd_module.SpdPrompt.next_cycle

    def install(self) -> None:
        clock, original = self, self._next_cycle

        def next_cycle(spd):
            step = original(spd)
            if step.index == 0:
                clock.prompt += 1
            if clock.cuda:
                mark = torch.cuda.Event(enable_timing=True)
                mark.record()
            else:
                mark = time.perf_counter()
            clock.marks.append((clock.prompt, step.index, step.state, mark))
            return step

        spd_module.SpdPrompt.next_cycle = next_cycle

    def uninstall(self) -> None:
        spd_module.SpdPrompt.next_cycle = self._next_cycle

    def medians_us(self, skip_prompts: int = 0) -> dict[str, float]:
        """Median cycle time per state; the first ``skip_prompts`` decodes (warm-up) left out."""
        if self.cuda:
            torch.cuda.synchronize()
        samples: dict[str, list[float]] = {}
        for (prompt, _, state, start), (prompt_next, _, _, end) in zip(
            self.marks, self.marks[1:], strict=False
        ):
            if prompt != prompt_next or prompt <= skip_prompts:
                continue
            elapsed = start.elapsed_time(end) * 1e3 if self.cuda else (end - start) * 1e6
            samples.setdefault(state, []).append(elapsed)
            samples.setdefault("all", []).append(elapsed)
        return {state: float(np.median(values)) for state, values in sorted(samples.items())}


def layer_weight_bytes(model, layer: int) -> int:
    return sum(t.numel() * t.element_size() for t in model.layer_weights(layer) if t is not None)


def ar_step_us(model, kv_len: int, graphs: bool) -> float:
    """One AR decode step (all layers + head) at ``kv_len`` live positions, captured as one graph on a GPU."""
    cache = model.new_cache(kv_len + 1)
    step = decode_step_fn(model, cache, kv_bucket(kv_len + 1, cache.max_len))
    token = torch.zeros(1, 1, dtype=torch.long, device=model.device)
    position = torch.tensor([kv_len], device=model.device)
    if graphs:
        graphed = GraphedStep(step, (token, position))
        return time_callable(graphed.graph.replay, device=model.device, warmup=5, iters=50).median_us
    return time_callable(lambda: step(token, position), device=model.device, warmup=2, iters=10).median_us


@torch.inference_mode()
def bench(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    max_seq_len = args.prompt_len + args.new_tokens + args.stages + 128
    model, _ = load_fast_model(args.model, device=device, dtype=dtype, max_seq_len=max_seq_len)
    compiled = device.type == "cuda" and not args.no_compile
    if compiled:
        model.compile_layers()
    cfg = model.cfg
    prompts = prompt_set(args.prompts, args.prompt_len, cfg.vocab_size)
    copy_nbytes = (1 << 30) if device.type == "cuda" else (1 << 24)
    copy_gbps = measure_copy_bandwidth_gbps(
        device, nbytes=copy_nbytes, iters=20 if device.type == "cuda" else 3
    )
    log(f"copy bandwidth {copy_gbps:.0f} GB/s (read + write)")

    # Each method's warm-up decodes (one prompt per starting window, dispatch's `warmup`) run on the caches and
    # graphs its timed prompts use.
    warmup = device.type == "cuda" if args.warmup is None else bool(args.warmup)
    common = dict(max_new_tokens=args.new_tokens, warmup=warmup)
    spd_opts = dict(stages=args.stages, synthetic_alpha=args.alpha, spec_layers=args.spec_layers)
    ar_result = run_method("ar", model, prompts, **common)
    ar = ar_result.summary()
    step_us = ar_step_us(model, args.prompt_len + args.new_tokens // 2, graphs=device.type == "cuda")
    log(f"AR: {ar['tokens_per_s']:.1f} tok/s, step {step_us:.1f} us")

    clock = CycleClock(device)
    clock.install()
    try:
        spd_result = run_method("spd", model, prompts, **common, **spd_opts)
    finally:
        clock.uninstall()
    spd = spd_result.summary()
    identical = sum(a.tokens == b.tokens for a, b in zip(ar_result.prompts, spd_result.prompts, strict=True))
    phases = spd["phase_median_us"]
    split = split_layers(cfg.num_layers, args.stages)
    stages = []
    for depth, (start, end) in enumerate(split.ranges):
        weight_bytes = sum(layer_weight_bytes(model, i) for i in range(start, end))
        time_us = phases.get(f"stage{depth}", {}).get("all", float("nan"))
        gbps = weight_bytes / (time_us * 1e-6) / 1e9
        stages.append(
            {
                "stage": depth,
                "layers": end - start,
                "weight_bytes": weight_bytes,
                "median_us": time_us,
                "weights_gbps": gbps,
                # Copy bandwidth counts read + write; a stage step mostly reads weights.
                "fraction_of_copy_bandwidth": gbps / copy_gbps,
            }
        )
    result = {
        **device_info(device),
        "model": args.model,
        "dtype": dtype,
        "compiled": compiled,
        "graphs": device.type == "cuda",
        "stages": args.stages,
        "spec_layers": args.spec_layers,
        "nominal_alpha": args.alpha,
        "new_tokens": args.new_tokens,
        "prompts": args.prompts,
        "prompt_len": args.prompt_len,
        "copy_bandwidth_gbps": copy_gbps,
        "ar": {"tokens_per_s": ar["tokens_per_s"], "step_us": step_us, "tpot_ms": ar["tpot_ms"]},
        "spd": {
            "tokens_per_s": spd["tokens_per_s"],
            "tpot_ms": spd["tpot_ms"],
            "realised_alpha": spd["realised_alpha"],
            "tokens_per_cycle": spd["tokens_per_cycle"],
            "cycle_us_by_state": clock.medians_us(skip_prompts=spd_result.config["warmup_prompts"]),
            "stage_steps": stages,
            "draft_us": phases.get("draft", {}),
            "verify_us": phases.get("verify", {}),
            "phase_median_us": phases,
        },
        "warmup_prompts": spd_result.config["warmup_prompts"],
        "prompts_identical_to_ar": identical,
        "speedup_vs_ar": spd["tokens_per_s"] / ar["tokens_per_s"] if ar["tokens_per_s"] else None,
    }
    log(
        f"SPD n={args.stages}: {spd['tokens_per_s']:.1f} tok/s, realised α {spd['realised_alpha']:.2f}, "
        f"cycle {result['spd']['cycle_us_by_state']}, speedup {result['speedup_vs_ar']:.2f}x"
    )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = bench(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
