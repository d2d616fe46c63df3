"""`spdsim exec train-head`: load the target, build (or reuse) the corpus, train one head, write its checkpoint.

Outputs in ``out``: the SPD head as ``<model>_s<n>_l<L_s>.pt`` (v11 format), the EAGLE-3 head as
``eagle3_head.pt``, the SpecDec++ head as the published folder layout (``config.json`` + ``model.safetensors``)
directly in ``out``; and ``training.json`` (options, corpus statistics, loss curve, versions, device, date).
"""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from executor.train.corpus import CorpusConfig
from executor.train.loop import LoopConfig
from spdsim.contract import SpdsimError

HEADS = ("spd", "eagle3", "specdecpp")
TRAINING_FILE = "training.json"


@dataclass(frozen=True)
class TrainHeadOptions:
    model: str
    head: str
    out: Path
    stages: int | None = None
    stage_layers: tuple[int, ...] | None = None
    spec_layers: int = 2
    # "reference" (train.py's default 0,8,16,24,31 at L = 32: [0, L/4, L/2, 3L/4, L−1]), "stages" (one type per
    # depth: stage boundaries, last L−1), "auto" (the reference auto rule) or an explicit "0,8,16,..."
    aggr_feature_bound: str = "reference"
    mask_rule: str = "reference"  # deeper query rows: "reference" (t − T ≥ fill is deepest) or "depth"
    chain_head: Path | None = None  # specdecpp: the trained EAGLE-3 head it reads hidden states from
    ttt_steps: int = 7
    weight_mismatch: float = 6.0
    mixing_ratio: float = 0.15
    specdecpp_layers: int = 3
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    cache_dir: Path | None = None
    loop: LoopConfig = field(default_factory=LoopConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)


def environment() -> dict:
    """Versions, device and date recorded next to every result."""
    import transformers

    info = {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": "cpu",
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        info["git_head"] = head.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_head"] = None
    return info


def _save_dtype(model) -> torch.dtype:
    return model.dtype


def reference_bound(num_layers: int) -> tuple[int, ...]:
    """The reference train.py default `--aggr_feature_bound "0,8,16,24,31"` (written for Qwen3.5, L = 32) as a rule
    of L: [0, L/4, L/2, 3L/4, L−1] — five types, 15·H² of aggregation weights (docs/spd.md §2.1, §9)."""
    raw = (0, num_layers // 4, num_layers // 2, 3 * num_layers // 4, num_layers - 1)
    return tuple(sorted(set(raw)))


def stage_boundary_bound(layer_counts: tuple[int, ...]) -> tuple[int, ...]:
    """Anchors at the stage boundaries, the last at L−1: one aggregation type per depth.

    The reference train.py default "0,8,16,24,31" is this bound for Qwen3.5 (L = 32) at n = 4; L−1 rather than L
    keeps the deepest anchor pre-norm in the reference's HF prefill too (docs/spd.md §2.1 note iii).
    """
    bounds = [0]
    for count in layer_counts[:-1]:
        bounds.append(bounds[-1] + count)
    last = sum(layer_counts) - 1
    return tuple(b for b in bounds if b < last) + (last,)


def build_spd_head(model, hf_config, options: TrainHeadOptions):
    from executor.heads.spd_v11 import SpdHeadConfig, SpeculationModuleV11
    from executor.stages import split_layers

    split = split_layers(model.num_layers, options.stages, options.stage_layers)
    bound = options.aggr_feature_bound
    if bound == "stages":
        bound = stage_boundary_bound(split.layer_counts)
    elif bound == "reference":
        bound = reference_bound(split.num_layers)
    head_config = SpdHeadConfig.build(
        hf_config,
        num_stages=split.num_stages,
        num_spec_layers=options.spec_layers,
        aggr_feature_bound=bound,
        stage_layers=split.layer_counts,
        base_model_path=options.model,
    )
    drafter = SpeculationModuleV11(hf_config, head_config)
    lm_head = model.lm_head_matrix
    drafter.attach_base(model.norm.detach().float().cpu(), lm_head.detach().float().cpu())
    return drafter


def build_eagle3_head(model, hf_config):
    from executor.heads.eagle3 import Eagle3Head, Eagle3HeadConfig

    head = Eagle3Head(hf_config, Eagle3HeadConfig.build(hf_config))
    lm_head = model.lm_head_matrix
    with torch.no_grad():  # start from the target's own output layer, as the SPD drafter does
        head.lm_head.weight.copy_(lm_head.detach().float().cpu()[head.draft_token_ids])
        head.norm.weight.copy_(model.norm.detach().float().cpu())
    return head


def train_head(options: TrainHeadOptions, progress=print, show_progress: bool = True) -> dict:
    """Train one head as ``options`` say; returns the manifest also written to ``out/training.json``."""
    from executor.models import default_cache_dir, load_fast_model
    from executor.train.corpus import load_or_build_corpus
    from executor.train.loop import run_training

    if options.head not in HEADS:
        raise SpdsimError(f"head: unknown '{options.head}' (allowed: {', '.join(HEADS)})")
    if options.head == "spd" and options.stages is None and options.stage_layers is None:
        raise SpdsimError("head spd needs --stages (and --stage-layers for an uneven split)")
    if options.head == "specdecpp" and options.chain_head is None:
        raise SpdsimError("head specdecpp needs --chain-head: the trained EAGLE-3 head checkpoint")
    torch.manual_seed(options.seed)
    device = torch.device(options.device)
    model, loaded = load_fast_model(options.model, device=device, dtype=options.dtype, seed=options.seed)
    hf_config = loaded.hf_model.config
    cache_dir = options.cache_dir or default_cache_dir()
    objective, trainable, writer = _objective(model, hf_config, options, device)
    corpus = load_or_build_corpus(
        loaded.hf_model, loaded.tokenizer, options.model, options.corpus, cache_dir, progress
    )
    params = [p for p in trainable.parameters() if p.requires_grad]
    progress(f"train-head {options.head}: {sum(p.numel() for p in params) / 1e6:.2f} M trainable parameters")
    trainable.train()
    log = run_training(params, objective, corpus.blocks, options.loop, device, show_progress)
    trainable.eval()
    options.out.mkdir(parents=True, exist_ok=True)
    checkpoint = writer(trainable.to(_save_dtype(model)))
    manifest = {
        "head": options.head,
        "checkpoint": str(checkpoint),
        "model": options.model,
        "model_source": loaded.source,
        "options": _jsonable(asdict(replace(options, loop=None, corpus=None))),
        "loop": asdict(options.loop),
        "corpus": corpus.stats,
        "train": log.summary(),
        "loss_curve": log.losses[:: max(1, len(log.losses) // 200)],
        "environment": environment(),
    }
    (options.out / TRAINING_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    progress(f"train-head {options.head}: {log.steps} steps in {log.seconds:.0f} s -> {checkpoint}")
    return manifest


def _objective(model, hf_config, options: TrainHeadOptions, device):
    """(objective, trainable module on device, writer(module) -> checkpoint path)."""
    from executor.heads.checkpoint import save_spd_checkpoint
    from executor.heads.eagle3 import load_eagle3, save_eagle3
    from executor.heads.specdecpp import AcceptanceHead, save_specdecpp
    from executor.train.eagle3 import Eagle3Objective
    from executor.train.spd import SpdObjective
    from executor.train.specdecpp import SpecDecPPObjective

    if options.head == "spd":
        drafter = build_spd_head(model, hf_config, options).to(device)
        fills = torch.Generator().manual_seed(options.seed + 1)
        name = options.model.replace(":", "-").replace("/", "_")
        path = options.out / f"{name}_s{drafter.head_config.num_stages}_l{options.spec_layers}.pt"

        def write_spd(module):
            save_spd_checkpoint(module.cpu(), hf_config, path)
            return path

        return SpdObjective(model, drafter, fills, options.mask_rule), drafter, write_spd
    if options.head == "eagle3":
        head = build_eagle3_head(model, hf_config).to(device)
        path = options.out / "eagle3_head.pt"

        def write_eagle3(module):
            save_eagle3(module.cpu(), path)
            return path

        return Eagle3Objective(model, head, options.ttt_steps), head, write_eagle3
    chain = load_eagle3(options.chain_head, hf_config).to(device=device, dtype=torch.float32).eval()
    for p in chain.parameters():
        p.requires_grad_(False)
    acceptance = AcceptanceHead(hf_config.hidden_size, options.specdecpp_layers).to(device)
    generator = torch.Generator(device=device).manual_seed(options.seed + 2)
    objective = SpecDecPPObjective(
        model, chain, acceptance, generator, options.ttt_steps, options.weight_mismatch, options.mixing_ratio
    )

    def write_specdecpp(module):
        save_specdecpp(module.cpu(), options.out)
        return options.out

    return objective, acceptance, write_specdecpp


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
