"""GPU measurements behind the fidelity report (issues 5 and 6); run by ``studies/fidelity/run_fidelity_gpu*.sh``.

Parts (each its own process, each under a timeout in the shell scripts):

* ``dist``    — SPD across the visible GPUs: n stages (``--stages`` or ``--stage-layers``), the drafter co-located
  with stage 0 or on its own GPU (``--drafter colocated|dedicated``), synthetic acceptance per ``--alphas`` (or
  a trained ``--head`` with its real acceptance: ``--alphas none``), and AR on the controller's GPU in the same
  session. Run names encode the configuration: ``<prefix>_spd_n4_colo_a0.70``, ``<prefix>_spd_n3_ded_a0.85``,
  ``<prefix>_spd_n2_colo`` (trained head), ``<prefix>_ar``.
* ``tp``      — tensor-parallel AR on ``--tp`` GPUs (``executor.distributed.tp``), run ``<prefix>_tp<d>_ar``.
* ``allreduce`` — the TP all_reduce of hidden-state messages across ``--tp`` ranks (``executor.profile_tp``).
* ``profile`` — single-GPU phase profile bundle (stage layers for every split in ``--stage-counts``, embed, head,
  AR step, copy) plus the SPD drafter's forward for L_s in ``--profile-spec-layers`` and n + 1 rows for every n;
  with ``--tp-degrees`` also one TP shard's layers per degree (phase ``layers_tp``, ``executor.profile_tp``).
* ``chain``   — single-GPU EAGLE-3-style chain SD (K = 3 and 5, synthetic α = 0.8) and AR on that GPU.

A warm-up prompt (long enough to cross the 256-position attention bucket) is decoded first in every session and
dropped from the results, so graph capture and first-call costs stay out of the numbers. ``--device cpu`` (gloo,
no graphs) with ``random:tiny-qwen3`` is the dry run of every part.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import time
from pathlib import Path

import torch


def parse_alphas(text: str) -> list[float | None]:
    """'0.6,0.8' -> [0.6, 0.8]; 'none' (a trained head, real acceptance) -> [None]."""
    if text.strip().lower() in ("", "none"):
        return [None]
    return [float(a) for a in text.split(",") if a.strip()]


def parse_ints(text: str | None) -> tuple[int, ...] | None:
    return tuple(int(v) for v in text.replace(";", ",").split(",") if v.strip()) if text else None


def spd_run_name(prefix: str, stages: int, colocated: bool, alpha: float | None) -> str:
    """``<prefix>_spd_n<n>_<colo|ded>[_a<α>]``; the default prefix ``dist`` keeps the issue-5 names
    (``dist_spd_n2_a0.80``) that studies/fidelity/fidelity.py reads from studies/fidelity/results/."""
    placement = "colo" if colocated else "ded"
    name = f"{prefix}_spd_n{stages}" + ("" if prefix == "dist" and colocated else f"_{placement}")
    return name if alpha is None else f"{name}_a{alpha:.2f}"


def prompt_set(model: str, count: int, new_tokens: int):
    """MT-bench first turns: byte-tokenized for random/config models (128..(511 - new_tokens - 8) ids, a warm-up
    that crosses the 256-position bucket), the model's chat template otherwise (warm-up: the longest of 20)."""
    from executor.models import ByteTokenizer, load_model
    from executor.prompts import load_prompts
    from executor.schedules.common import Prompt

    if model.startswith(("random:", "config:")):
        longest = 511 - new_tokens - 8
        rows = [p for p in load_prompts("mt_bench", ByteTokenizer()) if 128 <= len(p.token_ids) <= longest]
        warm = next(p for p in rows if 256 - max(new_tokens // 2, 16) <= len(p.token_ids) <= 250)
    else:
        rows = load_prompts("mt_bench", load_model(model).tokenizer)
        warm = max(rows[:20], key=lambda p: len(p.token_ids))
    chosen = [p for p in rows if p is not warm][:count]
    return [Prompt("warmup", warm.token_ids)] + [Prompt(p.prompt_id, p.token_ids) for p in chosen]


def drop_warmup(result):
    return dataclasses.replace(result, prompts=tuple(p for p in result.prompts if p.prompt_id != "warmup"))


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


def stamp(args) -> dict:
    import transformers

    return {
        "model": args.model,
        "dtype": args.dtype,
        "gpu": device_name(args.device),
        "gpus_visible": torch.cuda.device_count() if args.device == "cuda" else 0,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": str(torch.version.cuda),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "script": "studies/fidelity/fidelity_gpu.py",
    }


def write(result, out: Path, name: str, args, extra=None) -> None:
    from executor.rundir import write_run_dir

    lengths = {p.prompt_id: p.prompt_tokens for p in drop_warmup(result).prompts}
    write_run_dir(drop_warmup(result), out / name, {**stamp(args), "prompt_tokens": lengths, **(extra or {})})
    summary = drop_warmup(result).summary()
    keys = ("tokens_per_s", "tpot_ms", "tokens_per_cycle", "acceptance_rate")
    print(name, {k: round(summary[k], 4) for k in keys if summary.get(k) is not None}, flush=True)


def lossless_line(name: str, reference, result) -> int:
    """Prints and returns how many prompts (warm-up excluded) decoded exactly the reference's tokens."""
    pairs = [
        (a, s) for a, s in zip(reference.prompts, result.prompts, strict=True) if a.prompt_id != "warmup"
    ]
    same = sum(a.tokens == s.tokens for a, s in pairs)
    print(f"{name}: {same}/{len(pairs)} prompts identical to AR (lossless check)", flush=True)
    return same


def model_source(args):
    from executor.distributed import ModelSource

    return ModelSource(args.model, dtype=args.dtype, seed=0, max_seq_len=1024)


def part_dist(args, out: Path) -> None:
    from executor.distributed import DistributedConfig, run_distributed
    from executor.schedules.common import DecodeOptions

    prompts = prompt_set(args.model, args.prompts, args.new_tokens)
    stage_layers = parse_ints(args.stage_layers)
    stages = len(stage_layers) if stage_layers else args.stages
    colocated = args.drafter == "colocated"
    graphs = args.device == "cuda" and not args.no_graphs
    config = DistributedConfig(
        num_stages=stages,
        stage_layers=stage_layers,
        colocated=colocated,
        backend="nccl" if args.device == "cuda" else "gloo",
        with_ar=True,
        timeout_s=args.timeout_s,
        idle_timeout_s=600,
        spec_layers=args.spec_layers,
        head=args.head,
        use_graphs=graphs,
        warmup=False,  # prompt_set's own warm-up prompt (module docstring), as in the committed campaigns
    )
    alphas = parse_alphas(args.alphas)
    jobs = [DecodeOptions(max_new_tokens=args.new_tokens, synthetic_alpha=a) for a in alphas]
    started = time.perf_counter()
    run = run_distributed(model_source(args), prompts, config, jobs)
    print(
        f"dist session {time.perf_counter() - started:.1f} s, backend {run.backend}, world {run.world_size}"
    )
    extra = {
        "use_graphs": graphs,
        "head": args.head,
        "session": args.name_prefix,
        "gpus": run.world_size,
    }
    ar_name = args.ar_name or f"{args.name_prefix}_ar"
    write(run.ar, out, ar_name, args, {**extra, "placement": "controller rank's GPU"})
    for alpha, result in zip(alphas, run.spd, strict=True):
        name = spd_run_name(args.name_prefix, stages, colocated, alpha)
        same = lossless_line(name, run.ar, result)
        write(result, out, name, args, {"lossless_prompts": same, "ar_run": ar_name, **extra})


def part_tp(args, out: Path) -> None:
    from executor.distributed.tp import run_tensor_parallel
    from executor.schedules.common import DecodeOptions

    prompts = prompt_set(args.model, args.prompts, args.new_tokens)
    graphs = args.device == "cuda" and not args.no_graphs
    job = DecodeOptions(max_new_tokens=args.new_tokens)
    started = time.perf_counter()
    results = run_tensor_parallel(
        model_source(args),
        prompts,
        args.tp,
        [job],
        backend="nccl" if args.device == "cuda" else "gloo",
        timeout_s=args.timeout_s,
        use_graphs=graphs,
        warmup=False,  # prompt_set's own warm-up prompt (module docstring)
    )
    print(f"tp session {time.perf_counter() - started:.1f} s, tp {args.tp}", flush=True)
    name = f"{args.name_prefix}_tp{args.tp}_ar"
    extra = {"use_graphs": graphs, "session": args.name_prefix, "gpus": args.tp, "tensor_parallel": args.tp}
    write(results[0], out, name, args, extra)


def drafter_phase(model, spec_layers: tuple[int, ...], stage_counts, kv_lens, iters: int):
    """Median time of the distributed controller's drafting step (aggregation rows + PDM layers + draft lm_head
    + argmax) with n + 1 rows (pending deepest row + n in flight) for every n, plus 2 rows (a refill) —
    ``query_tokens`` = rows, as the simulator prices the PDM."""
    from executor.distributed.launch import DistributedConfig, build_drafter
    from executor.stages import split_layers, uneven_counts
    from executor.timing import time_callable

    hidden = model.cfg.hidden_size
    rows_of_n = {n: n + 1 for n in stage_counts if 2 <= n <= model.num_layers}
    row_plan = sorted({(2, 2)} | {(rows, n) for n, rows in rows_of_n.items()})
    entries = []
    for ls in spec_layers:
        for rows, n in row_plan:
            split = split_layers(model.num_layers, n, uneven_counts(model.num_layers, n))
            config = DistributedConfig(num_stages=n, stage_layers=split.layer_counts, spec_layers=ls)
            drafter = build_drafter(model, split, config, seed=0)
            feats = {
                b: torch.randn(1, 1, hidden, device=model.device, dtype=model.dtype)
                for b in drafter.anchor_indices
            }
            types = [drafter.num_aggr_types - 1] + [
                drafter.aggr_of_depth[d] for d in reversed(range(rows - 1))
            ]
            for kv_len in kv_lens:
                cache = drafter.new_cache(capacity=kv_len + 16)
                positions = torch.arange(kv_len - rows, kv_len, device=model.device)

                def step(_d=drafter, _c=cache, _f=feats, _t=types, _p=positions, _k=kv_len - rows):
                    _c.length = _k
                    projected = torch.cat([_d.project(a, _f) for a in _t], dim=1)
                    logits = _d.decode(projected, _p, _c, keep=1)
                    return int(_d.full_vocab_logits(logits[0]).argmax())

                stats = time_callable(step, device=model.device, warmup=5, iters=iters)
                entries.append({"spec_layers": ls, "query_tokens": rows, "kv_len": kv_len, **stats.to_dict()})
                print(f"drafter L_s={ls} n={n} rows={rows} kv={kv_len}: {stats.median_us:.1f} us", flush=True)
            del drafter
    return entries


def write_tp_bundle(path: Path, model_name: str, phase: str, entries: list[dict], device: str) -> None:
    """TP microbenchmarks beside the schema-v1 bundle (merged into a calibrated profile by studies/fidelity/fidelity.py
    once the schema knows the phase)."""
    from executor.profile import software_info

    payload = {
        "kind": "spdsim.tp_microbench",
        "model": model_name,
        "gpu": device_name("cuda" if device.startswith("cuda") else "cpu"),
        "software": software_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "phases": {phase: entries},
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"{phase}: {len(entries)} entries -> {path.name}", flush=True)


def part_allreduce(args, out: Path) -> None:
    """The TP shards' all_reduce (hidden-state messages of 1..256 tokens, graph-captured on GPUs) across ``--tp``
    ranks, one GPU each (``executor.profile_tp``); the ``allreduce`` phase the TP latency model reads."""
    from executor.model_presets import PRESETS
    from executor.profile_tp import profile_allreduce

    entries = profile_allreduce(
        args.tp,
        PRESETS[args.model.split(":", 1)[1]]["hidden_size"],  # a random:<preset> model
        dtype=args.dtype,
        backend="nccl" if args.device == "cuda" else "gloo",
        use_graphs=args.device == "cuda",
        iters=args.iters,
        timeout_s=args.timeout_s,
    )
    for entry in entries:
        print(
            f"allreduce tp={entry['tp_degree']} bytes={entry['bytes']}: {entry['median_us']:.1f} us",
            flush=True,
        )
    write_tp_bundle(out / args.profile_name, args.model, "allreduce", entries, args.device)


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

    stage_counts = parse_ints(args.stage_counts)
    spec_layers = parse_ints(args.profile_spec_layers)
    kv_lens = parse_ints(args.kv_lens)
    device = "cuda:0" if args.device == "cuda" else "cpu"
    with torch.inference_mode():
        model, _ = load_fast_model(args.model, device=device, dtype=args.dtype, seed=0, max_seq_len=1024)
        grid = ProfileGrid(
            stage_counts=stage_counts,
            query_tokens=(1, 4, 6),
            kv_lens=kv_lens,
            head_query_tokens=(1, 2, 3, 4, 5, 6),
            spec_layers=(),  # the drafter is timed below, the way the distributed controller runs it
            chain_draft=False,
            iters=args.iters,
        )
        phases = profile_phases(
            model, grid, use_graphs=args.device == "cuda", progress=lambda m: print(m, flush=True)
        )
        phases["drafter"] = drafter_phase(model, spec_layers, stage_counts, kv_lens, iters=args.iters)
        tp_entries = []
        if args.tp_degrees:
            from executor.profile_tp import profile_layers_tp
            from spdsim.contract.profile_schema import PHASE_COORDINATES

            tp_entries = profile_layers_tp(
                model,
                parse_ints(args.tp_degrees),
                kv_lens=kv_lens,
                use_graphs=args.device == "cuda",
                iters=args.iters,
                progress=lambda m: print(m, flush=True),
            )
            if "layers_tp" in PHASE_COORDINATES:  # else beside the bundle (below)
                phases["layers_tp"], tp_entries = tp_entries, []
        bandwidth = measure_copy_bandwidth_gbps(device, nbytes=1 << (30 if args.device == "cuda" else 24))
        bundle = build_bundle(
            model_name=args.model.split(":", 1)[-1],
            model=model,
            phases=phases,
            hardware=hardware_info(device, bandwidth),
            source=(
                f"studies/fidelity/fidelity_gpu.py profile (single GPU, CUDA graphs; drafter eager; "
                f"splits {list(stage_counts)}, L_s {list(spec_layers)})"
            ),
        )
        write_bundle(out / args.profile_name, bundle)
        print(f"copy bandwidth {bandwidth:.0f} GB/s; profile {args.profile_name} written", flush=True)
        if tp_entries:
            tp_path = out / args.profile_name.replace(".json", "_tp.json")
            write_tp_bundle(tp_path, args.model, "layers_tp", tp_entries, device)


def part_chain(args, out: Path) -> None:
    from executor.models import load_fast_model
    from executor.schedules import run_method

    prompts = prompt_set(args.model, args.prompts, args.new_tokens)
    device = "cuda:0" if args.device == "cuda" else "cpu"
    with torch.inference_mode():
        model, _ = load_fast_model(args.model, device=device, dtype=args.dtype, seed=0, max_seq_len=1024)
        options = {"max_new_tokens": args.new_tokens}
        write(run_method("ar", model, prompts, **options), out, "gpu1_ar", args)
        for k in (3, 5):
            result = run_method("eagle3", model, prompts, k=k, synthetic_alpha=0.8, **options)
            write(result, out, f"gpu1_eagle3_k{k}_a0.80", args)


PARTS = {
    "dist": part_dist,
    "tp": part_tp,
    "allreduce": part_allreduce,
    "profile": part_profile,
    "chain": part_chain,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=tuple(PARTS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="random:qwen3-8b")
    parser.add_argument("--dtype", default="bfloat16", help="float32 for SmolLM2 (bf16 near-ties)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: gloo dry run")
    parser.add_argument("--prompts", type=int, default=4, help="prompts after the warm-up")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--no-graphs", action="store_true", help="eager stage steps (fallback)")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="dist/tp: any one wait inside a run")
    parser.add_argument("--name-prefix", default="dist", help="run names start with it (e.g. dist4)")
    parser.add_argument("--stages", type=int, default=2, help="dist: pipeline stages n")
    parser.add_argument("--stage-layers", default=None, help="dist: explicit split, e.g. 8,8,7,7")
    parser.add_argument("--drafter", choices=("colocated", "dedicated"), default="colocated")
    parser.add_argument("--alphas", default="0.6,0.8,0.95", help="dist: synthetic α list, or 'none'")
    parser.add_argument("--head", default=None, help="dist: trained v11 SPD checkpoint (use --alphas none)")
    parser.add_argument("--spec-layers", type=int, default=1, help="dist: untrained drafter's L_s")
    parser.add_argument("--ar-name", default=None, help="dist: AR run's name (default <prefix>_ar)")
    parser.add_argument("--tp", type=int, default=2, help="tp / allreduce: tensor-parallel degree (ranks)")
    parser.add_argument("--stage-counts", default="1,2,3,4", help="profile: splits whose stage sizes to time")
    parser.add_argument("--profile-spec-layers", default="1", help="profile: drafter L_s values")
    parser.add_argument("--tp-degrees", default="", help="profile: TP shard degrees to time, e.g. 1,2,4")
    parser.add_argument("--profile-name", default="profile_h200_qwen3-8b.json")
    parser.add_argument("--iters", type=int, default=60, help="profile: timed iterations per point")
    parser.add_argument("--kv-lens", default="128,512", help="profile: live KV lengths (cover the prompts)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible (use --device cpu for a dry run)")
    args.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(stamp(args)), flush=True)
    PARTS[args.part](args, args.out)


if __name__ == "__main__":
    main()
