"""``spdsim exec run --method spd --distributed``: the multi-process pipeline behind the executor CLI.

The ranks decode; this process draws the per-prompt bar (``executor.console.prompt_bar``, ``--progress``) from
the reports the decoding rank sends between prompts, and prints the summary once the bar has stopped."""

from __future__ import annotations

from spdsim.contract import SpdsimError

DRAFTER_PLACEMENTS = ("colocated", "own")


def run_from_cli(kw: dict) -> None:
    """Launch the distributed SPD for the CLI's options; prints the summary, writes the run directory."""
    from executor.console import prompt_bar
    from executor.distributed.launch import DistributedConfig, ModelSource, run_distributed
    from executor.schedules.common import DecodeOptions
    from executor.stages import parse_stage_layers

    if kw.get("tp") is not None:
        return _run_tensor_parallel(kw)
    if kw["method"] != "spd":
        raise SpdsimError(
            f"--distributed: method spd runs as a pipeline, ar with --tp N; got '{kw['method']}'"
        )
    if kw["drafter"] not in DRAFTER_PLACEMENTS:
        raise SpdsimError(f"--drafter: unknown '{kw['drafter']}' (allowed: {', '.join(DRAFTER_PLACEMENTS)})")
    if kw["stages"] is None and not kw["stage_layers"]:
        raise SpdsimError("--distributed: give --stages N (or --stage-layers)")
    device = kw["device"]
    dtype, prompts, stops = _prompts_and_stops(kw)
    stage_layers = parse_stage_layers(kw["stage_layers"]) if kw["stage_layers"] else None
    config = DistributedConfig(
        num_stages=kw["stages"] or len(stage_layers),
        stage_layers=stage_layers,
        colocated=kw["drafter"] == "colocated",
        backend="gloo" if device == "cpu" else "auto",
        timeout_s=kw["timeout_s"],
        head=str(kw["head"]) if kw["head"] is not None else None,
        use_graphs=kw["graphs"],
    )
    job = DecodeOptions(
        max_new_tokens=kw["max_new_tokens"],
        temperature=kw["temperature"],
        seed=kw["seed"],
        synthetic_alpha=kw["synthetic_alpha"],
        stop_token_ids=stops,
        top_k=kw.get("top_k") or 0,
        top_p=kw.get("top_p") or 1.0,
    )
    source = ModelSource(kw["model"], dtype=dtype, seed=kw["seed"])
    with prompt_bar(kw["method"], kw["progress"]) as progress:
        run = run_distributed(source, prompts, config, [job], progress)
    result = run.spd[0]
    summary = result.summary()
    print(f"spd distributed: {run.world_size} ranks ({run.backend}), drafter {kw['drafter']}")
    for key in ("decode_tokens", "tokens_per_s", "tpot_ms", "tokens_per_cycle", "acceptance_rate"):
        value = summary.get(key)
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    _write(result, kw, dtype)


def _prompts_and_stops(kw: dict):
    """(dtype, [(prompt id, token ids)], stop token ids) of the CLI's options."""
    from executor.models import RANDOM_PREFIX, ByteTokenizer, load_model
    from executor.prompts import load_prompts

    device = kw["device"]
    dtype = kw["dtype"] if kw["dtype"] != "auto" else ("float32" if device == "cpu" else "bfloat16")
    tokenizer = (
        ByteTokenizer() if kw["model"].startswith(RANDOM_PREFIX) else load_model(kw["model"]).tokenizer
    )
    prompts = [(p.prompt_id, p.token_ids) for p in load_prompts(kw["prompts"], tokenizer, limit=kw["limit"])]
    eos = getattr(tokenizer, "eos_token_id", None)
    stops = () if eos is None else (tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),))
    return dtype, prompts, stops


def _write(result, kw: dict, dtype: str) -> None:
    if kw["out"] is not None:
        from executor.rundir import write_run_dir

        lengths = {p.prompt_id: p.prompt_tokens for p in result.prompts}
        extra = {"model": kw["model"], "prompts": kw["prompts"], "dtype": dtype, "prompt_tokens": lengths}
        print(f"run directory: {write_run_dir(result, kw['out'], extra)}")


def _run_tensor_parallel(kw: dict) -> None:
    """``--method ar --tp N --distributed``: AR over N tensor-parallel ranks (``executor.distributed.tp``)."""
    from executor.console import prompt_bar
    from executor.distributed.launch import ModelSource
    from executor.distributed.tp import run_tensor_parallel
    from executor.schedules.common import DecodeOptions

    if kw["method"] != "ar":
        raise SpdsimError(f"--tp: tensor parallelism runs method ar, got '{kw['method']}'")
    if kw["synthetic_alpha"] is not None:
        raise SpdsimError("--tp: AR drafts nothing, --synthetic-alpha does not apply")
    dtype, prompts, stops = _prompts_and_stops(kw)
    job = DecodeOptions(
        max_new_tokens=kw["max_new_tokens"],
        temperature=kw["temperature"],
        seed=kw["seed"],
        stop_token_ids=stops,
    )
    source = ModelSource(kw["model"], dtype=dtype, seed=kw["seed"])
    backend = "gloo" if kw["device"] == "cpu" else "auto"
    with prompt_bar(kw["method"], kw["progress"]) as progress:
        (result,) = run_tensor_parallel(
            source,
            prompts,
            kw["tp"],
            [job],
            backend=backend,
            timeout_s=kw["timeout_s"],
            use_graphs=kw["graphs"],
            progress=progress,
        )
    summary = result.summary()
    print(f"ar tensor-parallel: {kw['tp']} ranks ({result.config['backend']})")
    for key in ("decode_tokens", "tokens_per_s", "tpot_ms"):
        value = summary.get(key)
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    _write(result, kw, dtype)
