"""Builds drafters and options for `run_method` (kept out of `__init__` so importing the package stays light)."""

from __future__ import annotations

from dataclasses import asdict, replace

import torch

from executor.graphs import GraphCache
from executor.heads.checkpoint import load_spd_checkpoint
from executor.heads.eagle3 import Eagle3Head, Eagle3HeadConfig, draft_vocabulary, load_eagle3
from executor.heads.layers import base_config_of
from executor.heads.spd_v11 import SpdHeadConfig, SpeculationModuleV11
from executor.schedules import METHODS
from executor.schedules.base import TIMED, WARMUP, PromptProgress, decode_each, warms_up, warmup_prompts
from executor.schedules.chain import run_chain
from executor.schedules.common import CycleTiming, DecodeOptions, Prompt, PromptRun, RunResult, as_prompts
from executor.schedules.spd import run_spd
from executor.stages import split_layers
from spdsim.contract import SpdsimError
from spdsim.contract.vocabulary import DRAFT_VOCAB_SIZE

_OPTION_FIELDS = (
    "max_new_tokens",
    "temperature",
    "seed",
    "synthetic_alpha",
    "stop_token_ids",
    "top_k",
    "top_p",
)


def dispatch(name: str, model, prompts, opts: dict) -> RunResult:
    """Every method is timed the same way: untimed warm-up decodes of `base.warmup_prompts` (one prompt per
    starting attention window, so captures, compiles and first-seen shapes happen off the clock; default on a GPU;
    the config's "warmup_prompts" counts them), then every prompt from its prefill's end (prefill excluded) to
    its last commit on the host clock, after the iteration's sync that committed the token. "progress" (a
    `base.PromptProgress`, default None: silent) hears each warm-up and each timed prompt end, between
    prompts."""
    opts = dict(opts)
    warmup = warms_up(opts.pop("warmup", None), model.device)
    return _dispatch(name, model, prompts, {**opts, "warmup": warmup})


def _dispatch(name: str, model, prompts, opts: dict) -> RunResult:
    fields = {key: opts.pop(key) for key in _OPTION_FIELDS if key in opts}
    fields["stop_token_ids"] = tuple(fields.get("stop_token_ids") or ())
    options = DecodeOptions(**fields)
    warmup = opts.pop("warmup", False)
    use_graphs = bool(opts.pop("use_graphs", True))  # every method: a run without graphs captures none
    progress = opts.pop("progress", None)
    if name == "ar":
        result = run_ar(model, prompts, options, use_graphs=use_graphs, warmup=warmup, progress=progress)
    elif name == "spd":
        result = _spd(model, prompts, options, opts, warmup, use_graphs, progress)
    elif name in ("draft-model", "eagle3"):
        drafter = _chain_drafter(name, model, options, opts)
        graphs = GraphCache(enabled=use_graphs)
        k = int(opts.pop("k", 3))
        result = run_chain(
            model, drafter, prompts, name, k, options, graphs, warmup=warmup, progress=progress
        )
        if name == "eagle3":
            rows = int(drafter.lm_head.weight.shape[0])  # the head's draft vocabulary, trained or random
            result = replace(result, config={**result.config, "draft_vocab_size": rows})
    else:
        raise SpdsimError(f"method {name!r} unknown (allowed: {', '.join(METHODS)})")
    if opts:
        raise SpdsimError(f"options {sorted(opts)} do not apply to method {name!r}")
    return result


def _spd(
    model,
    prompts,
    options: DecodeOptions,
    opts: dict,
    warmup: bool = False,
    use_graphs: bool = True,
    progress: PromptProgress | None = None,
) -> RunResult:
    stage_layers, stages = opts.pop("stage_layers", None), opts.pop("stages", None)
    head_path = opts.pop("head", None)
    base = base_config_of(model)
    spec_layers = opts.pop("spec_layers", 1)
    bound = opts.pop("aggr_feature_bound", "auto")
    flush = opts.pop("flush", "flush")
    if head_path is not None:
        drafter = load_spd_checkpoint(head_path, base, final_norm_weight=model.norm.detach().cpu())
        if stages is None and stage_layers is None:  # the checkpoint fixes the split it was trained for
            stage_layers = drafter.head_config.stage_layers
        split = split_layers(model.num_layers, stages, stage_layers)
    else:
        split = split_layers(model.num_layers, stages, stage_layers)
        head = SpdHeadConfig.build(
            base,
            num_stages=split.num_stages,
            num_spec_layers=int(spec_layers),
            aggr_feature_bound=bound,
            stage_layers=split.layer_counts,
        )
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(options.seed)
            drafter = SpeculationModuleV11(base, head)
        lm_head = model.lm_head_matrix
        drafter.attach_base(model.norm.detach().cpu().float(), lm_head.detach().cpu().float())
    drafter = drafter.to(device=model.device, dtype=model.dtype).eval()
    return run_spd(
        model, drafter, prompts, split, options, use_graphs, warmup=warmup, flush=flush, progress=progress
    )


def _chain_drafter(name: str, model, options: DecodeOptions, opts: dict):
    """The chain's drafter: the given draft model, or the EAGLE-3 head (trained from ``head``, else random)."""
    if name == "draft-model":
        draft = opts.pop("draft_model", None)
        if draft is None:
            raise SpdsimError("method draft-model needs a draft model (draft_model=...)")
        return draft
    head_path, vocab = opts.pop("head", None), opts.pop("draft_vocab_size", None)
    if head_path is not None and vocab is not None:
        raise SpdsimError("draft_vocab_size: a trained head's checkpoint fixes its draft vocabulary")
    return _eagle3_head(model, head_path, options.seed, DRAFT_VOCAB_SIZE if vocab is None else int(vocab))


def _eagle3_head(model, head_path, seed: int, draft_vocab_size: int = DRAFT_VOCAB_SIZE) -> Eagle3Head:
    if getattr(model, "is_hybrid", False):
        raise SpdsimError(
            "method eagle3 on a Qwen3.5 hybrid model is not supported yet (the EAGLE-3 head layer is not "
            "wired to the hybrid's partial-RoPE tables); use --method spd, ar or draft-model"
        )
    base = base_config_of(model)
    if head_path is not None:
        head = load_eagle3(head_path, base)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            ids = draft_vocabulary(base.vocab_size, draft_vocab_size)
            head = Eagle3Head(base, Eagle3HeadConfig.build(base, draft_token_ids=ids))
    return head.to(device=model.device, dtype=model.dtype).eval()


def run_ar(
    model,
    prompts,
    options: DecodeOptions,
    use_graphs: bool = True,
    warmup: bool = False,
    progress: PromptProgress | None = None,
) -> RunResult:
    """The AR schedule of `executor.schedules.ar` (graph-captured on a GPU), as a RunResult. ``warmup``: decode
    the prompts of `warmup_prompts` (one per starting window) untimed first, on the cache and graphs the timed
    prompts use; the config's "warmup_prompts" counts them. ``progress``: `base.decode_each`."""
    options.validate()
    prompts = as_prompts(prompts)
    # One cache and one set of captured graphs for all prompts: a capture per prompt costs ~80 ms on a GPU.
    cache = model.new_cache(max((len(p.tokens) for p in prompts), default=0) + options.max_new_tokens)
    graphs = GraphCache(enabled=use_graphs)
    warm = warmup_prompts(prompts) if warmup else ()
    # untimed, on the cache and graphs the timed prompts use
    ar_prompt_runs(model, warm, options, cache, graphs, WARMUP, progress)
    runs = ar_prompt_runs(model, prompts, options, cache, graphs, TIMED, progress)
    config = {"method": "ar", **asdict(options), "warmup_prompts": len(warm)}
    return RunResult("ar", config, runs, str(model.device))


def ar_prompt_runs(
    model,
    prompts,
    options: DecodeOptions,
    cache,
    graphs,
    phase: str = TIMED,
    progress: PromptProgress | None = None,
) -> tuple[PromptRun, ...]:
    """``generate_ar`` on each prompt in turn, sharing ``cache`` and ``graphs``; ``model`` is a FastModel or a
    tensor-parallel shard (same API). ``phase``, ``progress``: `base.decode_each`."""
    from executor.schedules.ar import GenerationConfig, SamplingConfig, generate_ar

    def decode(prompt: Prompt, index: int) -> PromptRun:
        sampling = SamplingConfig(
            temperature=options.temperature,
            top_k=options.top_k,
            top_p=options.top_p,
            seed=options.prompt_seed(index),
        )
        gen = GenerationConfig(options.max_new_tokens, sampling, options.stop_token_ids, graphs.enabled)
        out = generate_ar(model, prompt.tokens, gen, cache=cache, graphs=graphs)
        cycles = tuple(CycleTiming(i, "ar", 1, {"step": us}) for i, us in enumerate(out.step_us))
        # the trace's spans count from the first timed step (prefill excluded), as PhaseTimer's from the first phase
        origin = out.step_start_us[0] if out.step_start_us else 0.0
        spans = tuple(
            (i, "step", start - origin, us)
            for i, (start, us) in enumerate(zip(out.step_start_us, out.step_us, strict=True))
        )
        return PromptRun(
            prompt.prompt_id,
            len(prompt.tokens),
            out.tokens,
            tuple(out.token_times_us),
            (-1, *range(len(out.step_us))),
            (False,) * len(out.tokens),
            cycles,
            (),
            0,
            0,
            phase_spans=spans,
        )

    return decode_each(prompts, decode, phase, progress)


def lossless_check(
    model, prompts, result: RunResult, progress: PromptProgress | None = None
) -> tuple[int, int]:
    """(prompts whose tokens equal greedy AR's, prompts); only meaningful for a temperature-0 run.
    ``progress`` hears the AR reference's prompts (`base.decode_each`)."""
    if result.config.get("temperature", 0.0) != 0.0:
        raise SpdsimError("the lossless check compares with greedy AR: it needs a temperature-0 run")
    options = {key: result.config[key] for key in ("max_new_tokens", "stop_token_ids")}
    reference = run_ar(
        model,
        prompts,
        DecodeOptions(**{**options, "stop_token_ids": tuple(options["stop_token_ids"])}),
        progress=progress,
    )
    matches = sum(a.tokens == b.tokens for a, b in zip(reference.prompts, result.prompts, strict=True))
    return matches, len(result.prompts)
