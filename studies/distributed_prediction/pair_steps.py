"""The steps of the two-GPU run (issue 18), each run in a process of its own by ``run_pair.py``: a step that hangs
or dies is killed alone, and the GPUs it held are free for the next one.

* ``p2p``          ping-pong latency (control word, one hidden state per model) and bandwidth between the ranks
* ``ar-<model>``   compiled, graph-captured AR on one GPU (``ModelSource.build`` + ``run_ar`` with warm-up)
* ``spd-<model>``  SPD n = 2, drafter co-located with stage 0, one session for every synthetic α
* ``smol-head``    SmolLM2-135M's SPD head (n = 2, L_s = 1) trained on one GPU (the weights are not committed)
* ``smol-spd``     SmolLM2-135M in float32 with that head, n = 2, and AR in the same session: lossless check

Every run is written in the run-directory format (``executor.rundir.write_run_dir``, through fidelity_gpu's
``write``); every step says what it did in lines starting with ``SAY`` (the runner echoes them).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for folder in (ROOT, ROOT / "studies" / "fidelity"):  # fidelity_gpu: prompt_set, write, lossless_line, ...
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

SAY = "» "
STAGES = 2  # the pair: one stage per GPU, the drafter beside stage 0
MODEL_SPECS = {"qwen3-8b": "random:qwen3-8b", "qwen3-4b": "random:qwen3-4b"}
# predict.py's MODELS and ALPHAS (the test holds them equal): not imported, so that a step needs no simulator
ALPHAS = (0.6, 0.8, 0.95)
TINY_SPEC = "random:tiny-qwen3"  # --tiny: the stand-in of every model (CPU, gloo)
SMOL_SPEC = "smollm2-135m"
SMOL_HEAD_DIR = "smol_head"


@dataclass(frozen=True)
class Settings:
    """What every step of one pair run shares (``run_pair.py`` parses it; its steps get the same options)."""

    out: Path
    tiny: bool = False
    models: tuple[str, ...] = tuple(MODEL_SPECS)
    alphas: tuple[float, ...] = ALPHAS
    prompts: int = 4
    new_tokens: int = 256
    smol_head: Path | None = None
    smol_train_minutes: float = 1.25
    timeout_s: float = 240.0  # any one wait inside a distributed run (first compiles included)

    @property
    def device(self) -> str:
        return "cpu" if self.tiny else "cuda"

    def spec(self, tag: str) -> str:
        return TINY_SPEC if self.tiny else MODEL_SPECS[tag]

    def run_args(self, tag: str) -> RunArgs:
        return RunArgs(self.spec(tag), "float32" if self.tiny else "bfloat16", self.device)

    def smol_args(self) -> RunArgs:
        return RunArgs(TINY_SPEC if self.tiny else SMOL_SPEC, "float32", self.device)


@dataclass(frozen=True)
class RunArgs:
    """The fields fidelity_gpu's ``stamp``, ``write`` and ``model_source`` read from their arguments."""

    model: str
    dtype: str
    device: str  # "cuda" | "cpu"


def say(message: str) -> None:
    print(f"{SAY}{message}", flush=True)


def outcome(step: str, status: str, seconds: float, reason: str = "") -> dict:
    """A step's record in steps.json: status done | failed | timeout | skipped."""
    return {"step": step, "status": status, "seconds": round(seconds, 1), "reason": reason}


def describe(record: dict) -> str:
    """``step: status (seconds) — reason``, one line."""
    reason = f" — {record['reason']}" if record.get("reason") else ""
    return f"{record['step']}: {record['status']} ({record['seconds']:.0f} s){reason}"


def held_out(tag: str, alpha: float | None = None) -> bool:
    """α = 0.95 and every qwen3-4b run stay out of any calibration (issue 18)."""
    return tag == "qwen3-4b" or alpha == 0.95


def spd_name(tag: str, alpha: float) -> str:
    from fidelity_gpu import spd_run_name

    return spd_run_name(f"pair_{tag}", STAGES, True, alpha)


def timed_prompts(args: RunArgs, count: int, new_tokens: int):
    """fidelity_gpu's MT-bench prompts without its own warm-up prompt: the schedules warm up themselves
    (``warmup=True``: one untimed prompt per starting window, ``base.warmup_prompts``)."""
    from fidelity_gpu import prompt_set

    return [p for p in prompt_set(args.model, count, new_tokens) if p.prompt_id != "warmup"]


def extra(settings: Settings, tag: str, **fields: Any) -> dict[str, Any]:
    """What every run's config.json gets beside the executor's own fields."""
    return {
        "script": "studies/distributed_prediction/run_pair.py",
        "issue": 18,
        "tiny": settings.tiny,
        "model_tag": tag,
        **fields,
    }


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=1, sort_keys=True, default=str) + "\n")


# -- step: p2p ------------------------------------------------------------------------------------------------
def step_p2p(settings: Settings) -> None:
    from executor.distributed.comm import CONTROL_FIELDS
    from executor.model_presets import PRESETS
    from executor.profile_p2p import Message, P2PSpec, bandwidth_messages, profile_p2p

    sizes = {
        tag: PRESETS[settings.spec(tag).removeprefix("random:")]["hidden_size"] for tag in settings.models
    }
    hidden = [Message(f"hidden {tag} ({size} x bf16)", size) for tag, size in sizes.items()]
    control = Message(f"control word ({len(CONTROL_FIELDS)} x int64)", len(CONTROL_FIELDS), "int64")
    mib = (1,) if settings.tiny else (1, 16, 64, 256)
    spec = P2PSpec(
        (control, *hidden, *bandwidth_messages(mib)),
        warmup=2 if settings.tiny else 20,
        iters=10 if settings.tiny else 200,
        large_iters=3 if settings.tiny else 20,
        timeout_s=settings.timeout_s,
    )
    backend = "gloo" if settings.tiny else "nccl"
    entries = profile_p2p(spec, backend=backend)
    write_json(settings.out / "p2p.json", {"backend": backend, "entries": entries})
    for e in entries:
        say(
            f"p2p {e['label']}: one-way {e['median_us']:.1f} us (p10 {e['p10_us']:.1f}, p90 "
            f"{e['p90_us']:.1f}), {e['gbps']:.2f} GB/s"
        )


# -- step: AR on one GPU ----------------------------------------------------------------------------------------
def step_ar(settings: Settings, tag: str) -> None:
    import numpy as np
    import torch
    from fidelity_gpu import model_source, write

    from executor.profile import measure_copy_bandwidth_gbps
    from executor.schedules.common import DecodeOptions
    from executor.schedules.dispatch import run_ar
    from executor.timing import TimingStats

    args = settings.run_args(tag)
    device = "cuda:0" if args.device == "cuda" else "cpu"
    prompts = timed_prompts(args, settings.prompts, settings.new_tokens)
    with torch.inference_mode():
        model = model_source(args).build(device)  # compiled layers on a GPU, as the distributed ranks
        options = DecodeOptions(max_new_tokens=settings.new_tokens)
        result = run_ar(model, prompts, options, use_graphs=args.device == "cuda", warmup=True)
        copy_gbps = measure_copy_bandwidth_gbps(device, nbytes=1 << (30 if args.device == "cuda" else 24))
        weight_bytes = model.cfg.decode_weight_bytes(model.embed_tokens.element_size())
    steps = [float(d) for run in result.prompts for d in np.diff(run.token_times_us)]
    stats = TimingStats.from_samples(steps)
    achieved = weight_bytes / stats.median_us / 1e3
    report = {
        "model": tag,
        "spec": args.model,
        "tpot_ms": result.summary()["tpot_ms"],
        "step": stats.to_dict(),
        "weight_bytes": weight_bytes,
        "achieved_weight_gbps": achieved,
        "copy_bandwidth_gbps": copy_gbps,
        "fraction_of_copy": achieved / copy_gbps,
        "warmup_prompts": result.config.get("warmup_prompts"),
    }
    write_json(settings.out / f"ar_{tag}.json", report)
    write(result, settings.out, f"ar_{tag}", args, extra(settings, tag, held_out=held_out(tag), gpus=1))
    say(
        f"AR {tag}: step {stats.median_us / 1e3:.3f} ms (p10 {stats.p10_us / 1e3:.3f}, p90 "
        f"{stats.p90_us / 1e3:.3f}), weights {achieved:.0f} GB/s = {achieved / copy_gbps:.1%} of copy"
    )


# -- step: SPD n = 2 on the pair --------------------------------------------------------------------------------
def pair_config(settings: Settings, **fields: Any):
    from executor.distributed import DistributedConfig

    return DistributedConfig(
        num_stages=STAGES,
        colocated=True,
        backend="gloo" if settings.tiny else "nccl",
        timeout_s=settings.timeout_s,
        idle_timeout_s=600.0,
        use_graphs=not settings.tiny,
        warmup=True,  # also on the CPU, so that --tiny runs the warm-up path
        **fields,
    )


def progress_lines(label: str):
    """A ``PromptProgress`` that says every finished prompt (the runner echoes the lines live)."""
    started = time.monotonic()
    said: set[tuple[str, int, int]] = set()  # a job's first report repeats the last job's count

    def report(phase: str, done: int, total: int) -> None:
        if done and (phase, done, total) not in said:
            said.add((phase, done, total))
            say(f"{label}: {phase} prompt {done}/{total} ({time.monotonic() - started:.0f} s)")

    return report


def step_spd(settings: Settings, tag: str) -> None:
    from fidelity_gpu import model_source, write

    from executor.distributed import run_distributed
    from executor.schedules.common import DecodeOptions

    args = settings.run_args(tag)
    prompts = timed_prompts(args, settings.prompts, settings.new_tokens)
    jobs = [DecodeOptions(max_new_tokens=settings.new_tokens, synthetic_alpha=a) for a in settings.alphas]
    run = run_distributed(
        model_source(args), prompts, pair_config(settings), jobs, progress_lines(f"SPD {tag}")
    )
    for alpha, result, syncs in zip(settings.alphas, run.spd, _per_job(run, len(prompts)), strict=True):
        fields = extra(
            settings,
            tag,
            held_out=held_out(tag, alpha),
            gpus=run.world_size,
            backend=run.backend,
            ar_run=f"ar_{tag}",
            controller_syncs_per_saturated_cycle=saturated_syncs(syncs),
        )
        write(result, settings.out, spd_name(tag, alpha), args, fields)
        summary = result.summary()
        cycles = [c.phases_us["cycle"] for p in result.prompts for c in p.cycles if c.state == "saturated"]
        say(
            f"SPD {tag} a={alpha}: realised a {summary['realised_alpha']:.3f}, TPOT {summary['tpot_ms']:.3f} ms, "
            f"saturated cycle median {statistics.median(cycles) / 1e3 if cycles else float('nan'):.3f} ms, "
            f"{summary['tokens_per_cycle']:.3f} tokens/cycle"
        )


def saturated_syncs(prompts: tuple) -> float | None:
    """The controller's mean host syncs per saturated cycle (steady state: the verify's one read)."""
    counts = [k for cycles in prompts for state, k in cycles if state == "saturated"]
    return sum(counts) / len(counts) if counts else None


def _per_job(run, prompts: int) -> list[tuple]:
    """``DistributedRun.cycle_syncs`` (every timed prompt of every job in order) cut per job."""
    syncs = run.cycle_syncs
    return [syncs[i * prompts : (i + 1) * prompts] for i in range(len(run.spd))]


def own_gpu_drafter(gpus: int = STAGES) -> str | None:
    """Why the drafter-on-its-own-GPU variant cannot run on the pair (None if it could)."""
    from executor.distributed.comm import Roles

    roles = Roles(STAGES, colocated=False)
    if roles.world_size <= gpus:
        return None
    return (
        f"drafter on its own GPU: Roles(num_stages={STAGES}, colocated=False) needs {roles.world_size} ranks "
        f"(controller + {STAGES} stages), the pair has {gpus} GPUs"
    )


# -- SmolLM2: its head, then SPD against AR ---------------------------------------------------------------------
def smollm2_on_machine() -> str | None:
    """Where SmolLM2-135M's weights are on this machine, or None (no registry is asked: the device has none)."""
    from executor.models import SMOLLM2_ENV, SMOLLM2_MEMBER, default_cache_dir, smollm2_cached

    cache = default_cache_dir()
    candidates = [os.environ.get(SMOLLM2_ENV) or "", str(cache / "smollm2" / Path(SMOLLM2_MEMBER).name)]
    if smollm2_cached(cache):
        return str(cache / "smollm2" / "hf")
    return next((c for c in candidates if c and Path(c).is_file()), None)


def smol_checkpoint(settings: Settings) -> Path | None:
    if settings.smol_head is not None:
        return settings.smol_head
    found = sorted((settings.out / SMOL_HEAD_DIR).glob("*.pt"))
    return found[0] if found else None


def step_smol_head(settings: Settings) -> None:
    from executor.train.corpus import CorpusConfig
    from executor.train.loop import LoopConfig
    from executor.train.run import TrainHeadOptions, train_head

    args = settings.smol_args()
    if settings.tiny:
        loop = LoopConfig(max_steps=2, minutes=0, batch_size=2)
        corpus = CorpusConfig(
            block_len=16, source_bytes=4000, site_packages=False, pydoc_topics=False, gsm8k_questions=0
        )
        cache = settings.out / "cache"
    else:  # the fidelity_x4 SmolLM2 lane's corpus, smaller: the head's quality is not this question
        loop = LoopConfig(max_steps=4000, minutes=settings.smol_train_minutes, batch_size=8)
        corpus = CorpusConfig(source_bytes=4_000_000, gsm8k_questions=128)
        cache = None
    options = TrainHeadOptions(
        model=args.model,
        head="spd",
        out=settings.out / SMOL_HEAD_DIR,
        stages=STAGES,
        spec_layers=1,
        aggr_feature_bound="stages",  # the heads study's SmolLM2 heads (studies/heads/results/spd_n2_l1)
        device="cpu" if settings.tiny else "cuda",
        dtype="float32" if settings.tiny else "bfloat16",
        cache_dir=cache,
        loop=loop,
        corpus=corpus,
    )
    manifest = train_head(options, progress=say, show_progress=False)
    train = manifest["train"]
    say(f"SmolLM2 head: {train['steps']} steps in {train['seconds']:.0f} s -> {manifest['checkpoint']}")


def step_smol_spd(settings: Settings) -> None:
    from fidelity_gpu import lossless_line, model_source, write

    from executor.distributed import run_distributed
    from executor.schedules.common import DecodeOptions

    head = smol_checkpoint(settings)
    if head is None:
        raise FileNotFoundError(f"no SmolLM2 head under {settings.out / SMOL_HEAD_DIR} and no --smol-head")
    args = settings.smol_args()
    prompts = timed_prompts(args, settings.prompts, settings.new_tokens)
    config = pair_config(settings, head=str(head), with_ar=True)
    job = DecodeOptions(max_new_tokens=settings.new_tokens)
    run = run_distributed(model_source(args), prompts, config, [job], progress_lines("SmolLM2"))
    name = "smol_spd_n2_colo"
    same = lossless_line(name, run.ar, run.spd[0])
    fields = extra(settings, "smollm2-135m", head=str(head), gpus=run.world_size, backend=run.backend)
    write(run.ar, settings.out, "smol_ar", args, {**fields, "placement": "controller rank's GPU"})
    write(run.spd[0], settings.out, name, args, {**fields, "lossless_prompts": same, "ar_run": "smol_ar"})
    summary = run.spd[0].summary()
    lossless = {"identical": same, "prompts": len(prompts), "dtype": args.dtype, "model": args.model}
    write_json(settings.out / "lossless.json", {**lossless, "acceptance_rate": summary["acceptance_rate"]})
    say(
        f"SmolLM2 {args.dtype}: {same}/{len(prompts)} prompts identical to AR; alpha {summary['acceptance_rate']:.3f}"
    )


def run_step(settings: Settings, name: str) -> None:
    """Run the step called ``name`` in this process (``run_pair.py --step NAME``)."""
    if name == "p2p":
        step_p2p(settings)
    elif name == "smol-head":
        step_smol_head(settings)
    elif name == "smol-spd":
        step_smol_spd(settings)
    elif name.startswith(("ar-", "spd-")) and name.split("-", 1)[1] in settings.models:
        kind, tag = name.split("-", 1)
        (step_ar if kind == "ar" else step_spd)(settings, tag)
    else:
        raise ValueError(f"unknown step {name!r}")
