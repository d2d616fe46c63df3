"""GPU measurements behind the fidelity report (issue 5); run by ``studies/run_fidelity_gpu.sh`` on 2 GPUs.

Parts (each its own process, each under a timeout in the shell script):

* ``dist``    — SPD n = 2 across two GPUs (drafter co-located with stage 0, NCCL) with synthetic acceptance
  α ∈ {0.6, 0.8, 0.95}, and AR on the controller's GPU in the same session; one run directory each.
* ``profile`` — single-GPU phase profile bundle (stage layers, embed, head, AR step, copy) plus the SPD
  drafter's forward (aggregation + L_s layers + draft lm_head, eager as the executor runs it).
* ``chain``   — single-GPU EAGLE-3-style chain SD (K = 3 and 5, synthetic α = 0.8) and AR on that GPU.

A warm-up prompt (long enough to cross the 256-position attention bucket) is decoded first in every session and
dropped from the results, so graph capture and first-call costs stay out of the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import time
from pathlib import Path

import torch

ALPHAS = (0.6, 0.8, 0.95)


def prompt_set(count: int, new_tokens: int):
    """Byte-tokenized MT-bench prompts (random: models have no tokenizer) of 128..(511 - new_tokens - 8) ids."""
    from executor.models import ByteTokenizer
    from executor.prompts import load_prompts
    from executor.schedules.common import Prompt

    longest = 511 - new_tokens - 8
    rows = [p for p in load_prompts("mt_bench", ByteTokenizer()) if 128 <= len(p.token_ids) <= longest]
    warm = next(p for p in rows if 256 - new_tokens // 2 <= len(p.token_ids) <= 250)  # crosses the bucket
    chosen = [p for p in rows if p is not warm][:count]
    return [Prompt("warmup", warm.token_ids)] + [Prompt(p.prompt_id, p.token_ids) for p in chosen]


def drop_warmup(result):
    return dataclasses.replace(result, prompts=tuple(p for p in result.prompts if p.prompt_id != "warmup"))


def stamp(args) -> dict:
    import transformers

    return {
        "model": args.model,
        "gpu": torch.cuda.get_device_name(0),
        "gpus_visible": torch.cuda.device_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": str(torch.version.cuda),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "script": "studies/fidelity_gpu.py",
    }


def write(result, out: Path, name: str, args, extra=None) -> None:
    from executor.rundir import write_run_dir

    lengths = {p.prompt_id: p.prompt_tokens for p in drop_warmup(result).prompts}
    write_run_dir(drop_warmup(result), out / name, {**stamp(args), "prompt_tokens": lengths, **(extra or {})})
    summary = drop_warmup(result).summary()
    keys = ("tokens_per_s", "tpot_ms", "tokens_per_cycle", "acceptance_rate")
    print(name, {k: round(summary[k], 4) for k in keys if summary.get(k) is not None}, flush=True)


def part_dist(args, out: Path) -> None:
    from executor.distributed import DistributedConfig, ModelSource, run_distributed
    from executor.schedules.common import DecodeOptions

    prompts = prompt_set(args.prompts, args.new_tokens)
    source = ModelSource(args.model, dtype="bfloat16", seed=0, max_seq_len=1024)
    config = DistributedConfig(
        num_stages=2,
        colocated=True,
        with_ar=True,
        timeout_s=120,
        idle_timeout_s=600,
        use_graphs=not args.no_graphs,
    )
    jobs = [DecodeOptions(max_new_tokens=args.new_tokens, synthetic_alpha=a) for a in ALPHAS]
    started = time.perf_counter()
    run = run_distributed(source, prompts, config, jobs)
    print(
        f"dist session {time.perf_counter() - started:.1f} s, backend {run.backend}, world {run.world_size}"
    )
    extra = {"use_graphs": not args.no_graphs}
    write(run.ar, out, "dist_ar", args, {"gpus": "cuda:0 (controller rank)", **extra})
    for alpha, result in zip(ALPHAS, run.spd, strict=True):
        same = sum(a.tokens == s.tokens for a, s in zip(run.ar.prompts, result.prompts, strict=True))
        print(f"alpha {alpha}: {same}/{len(prompts)} prompts identical to AR (lossless check)")
        write(result, out, f"dist_spd_n2_a{alpha:.2f}", args, {"lossless_prompts": same, **extra})


def drafter_phase(model, spec_layers: int, rows_counts, kv_lens, iters: int):
    """Median time of the executor's drafting step: aggregation rows + PDM layers + draft lm_head + argmax."""
    from executor.distributed.launch import DistributedConfig, build_drafter
    from executor.stages import split_layers
    from executor.timing import time_callable

    split = split_layers(model.num_layers, 2)
    drafter = build_drafter(model, split, DistributedConfig(num_stages=2, spec_layers=spec_layers), seed=0)
    hidden = model.cfg.hidden_size
    entries = []
    for rows in rows_counts:
        for kv_len in kv_lens:
            cache = drafter.new_cache(capacity=kv_len + 16)
            cache.length = kv_len - rows
            feats = {
                b: torch.randn(1, 1, hidden, device=model.device, dtype=model.dtype)
                for b in drafter.anchor_indices
            }
            positions = torch.arange(kv_len - rows, kv_len, device=model.device)

            def step(_rows=rows, _cache=cache, _feats=feats, _positions=positions):
                projected = [
                    drafter.project(min(d, drafter.num_aggr_types - 1), _feats) for d in range(_rows)
                ]
                logits = drafter.decode(torch.cat(projected, dim=1), _positions, _cache, keep=0)
                return int(drafter.full_vocab_logits(logits[0]).argmax())

            stats = time_callable(step, device=model.device, warmup=5, iters=iters)
            entries.append(
                {"spec_layers": spec_layers, "query_tokens": rows, "kv_len": kv_len, **stats.to_dict()}
            )
            print(f"drafter rows={rows} kv={kv_len}: {stats.median_us:.1f} us", flush=True)
    return entries


def part_profile(args, out: Path) -> None:
    from executor.models import load_fast_model
    from executor.profile import (
        ProfileGrid,
        build_bundle,
        hardware_info,
        measure_copy_bandwidth_gbps,
        profile_phases,
        write_bundle,
    )

    with torch.inference_mode():
        model, _ = load_fast_model(args.model, device="cuda:0", dtype="bfloat16", seed=0, max_seq_len=1024)
        grid = ProfileGrid(
            stage_counts=(1, 2),
            query_tokens=(1, 4, 6),
            kv_lens=(128, 512),
            head_query_tokens=(1, 2, 3, 4, 5, 6),
            iters=60,
        )
        phases = profile_phases(model, grid, use_graphs=True, progress=lambda m: print(m, flush=True))
        phases["drafter"] = drafter_phase(model, 1, (2, 3), (128, 512), iters=60)
        bandwidth = measure_copy_bandwidth_gbps("cuda:0")
        bundle = build_bundle(
            model_name=args.model.replace("random:", ""),
            model=model,
            phases=phases,
            hardware=hardware_info("cuda:0", bandwidth),
            source="studies/fidelity_gpu.py profile (single GPU, CUDA graphs; drafter eager)",
        )
    write_bundle(out / "profile_h200_qwen3-8b.json", bundle)
    print(f"copy bandwidth {bandwidth:.0f} GB/s; profile written", flush=True)


def part_chain(args, out: Path) -> None:
    from executor.models import load_fast_model
    from executor.schedules import run_method

    prompts = prompt_set(args.prompts, args.new_tokens)
    with torch.inference_mode():
        model, _ = load_fast_model(args.model, device="cuda:0", dtype="bfloat16", seed=0, max_seq_len=1024)
        options = {"max_new_tokens": args.new_tokens}
        write(run_method("ar", model, prompts, **options), out, "gpu1_ar", args)
        for k in (3, 5):
            result = run_method("eagle3", model, prompts, k=k, synthetic_alpha=0.8, **options)
            write(result, out, f"gpu1_eagle3_k{k}_a0.80", args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("dist", "profile", "chain"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="random:qwen3-8b")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--no-graphs", action="store_true", help="dist: eager stage steps (fallback)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(stamp(args)), flush=True)
    {"dist": part_dist, "profile": part_profile, "chain": part_chain}[args.part](args, args.out)


if __name__ == "__main__":
    main()
