"""Microbenchmarks of the executor's phases -> a profile bundle (``spdsim/contract/profile_schema.py``, schema v1).

Every phase is timed as the simulator uses it: a stage of ``layers`` consecutive decoder layers on ``query_tokens``
new tokens with ``kv_len`` live cache positions, the embedding, final norm + lm_head + greedy verify, a whole AR
step, a device-to-device copy of a hidden state (the one-GPU stand-in for a point-to-point send), and how far
concurrent decode streams overlap on one GPU (``executor/profile_overlap.py``). On a GPU
each phase runs as a captured CUDA graph (compiled layers when asked), timed with CUDA events after warm-up.
"""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from executor.cache import KVCache, kv_bucket
from executor.fastmodel import FastModel
from executor.graphs import GraphedStep
from executor.profile_overlap import profile_stream_overlap
from executor.stages import split_layers, uneven_counts
from executor.timing import TimingStats, time_callable
from spdsim.contract import PROFILE_KIND, SCHEMA_VERSION, ModelShape, validate_profile
from spdsim.contract.vocabulary import DRAFT_VOCAB_SIZE


@dataclass(frozen=True)
class ProfileGrid:
    """Coordinates to measure; stage sizes come from splitting the model into each of ``stage_counts``."""

    stage_counts: tuple[int, ...] = (1, 2, 4, 8)
    query_tokens: tuple[int, ...] = (1, 4, 8)
    kv_lens: tuple[int, ...] = (64, 256, 1024, 4096)
    head_query_tokens: tuple[int, ...] = tuple(range(1, 10))
    spec_layers: tuple[int, ...] = (1, 2, 3)  # SPD drafter depths L_s; () skips the drafter phase
    chain_draft: bool = True  # the EAGLE-3 drafter pass (chain SD); not on the Qwen3.5 hybrid
    warmup: int = 5
    iters: int = 50


def stage_layer_counts(num_layers: int, stage_counts: tuple[int, ...]) -> list[int]:
    """Distinct per-stage layer counts over the requested splits (uneven splits give two sizes)."""
    counts: set[int] = set()
    for n in stage_counts:
        if n <= num_layers:
            split = (
                uneven_counts(num_layers, n) if num_layers % n else split_layers(num_layers, n).layer_counts
            )
            counts.update(split)
    return sorted(counts, reverse=True)


def model_shape(name: str, model: FastModel) -> dict[str, Any]:
    cfg = model.cfg
    shape = ModelShape(
        name=name,
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_heads,
        num_kv_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        intermediate_size=cfg.intermediate_size,
        vocab_size=cfg.vocab_size,
        tied_embeddings=cfg.tie_word_embeddings,
        dtype_bytes=model.embed_tokens.element_size(),
        # Qwen3.5 hybrid: Gated-DeltaNet layers and their shape, the attention output gate
        linear_attention_layers=len(getattr(cfg, "linear_layers", ())),
        attention_output_gate=hasattr(cfg, "linear_layers"),
        linear_key_heads=getattr(cfg, "linear_key_heads", 0),
        linear_value_heads=getattr(cfg, "linear_value_heads", 0),
        linear_head_dim=getattr(cfg, "linear_value_dim", 0),
    )
    return asdict(shape)


def measure_copy_bandwidth_gbps(device: torch.device | str, nbytes: int = 1 << 30, iters: int = 20) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written (GB/s, 1e9)."""
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    stats = time_callable(lambda: dst.copy_(src), device=device, warmup=3, iters=iters)
    return 2 * nbytes / (stats.median_us * 1e-6) / 1e9


def gpu_driver() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def hardware_info(device: torch.device | str, copy_bandwidth_gbps: float) -> dict[str, Any]:
    device = torch.device(device)
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        name = "nvidia-" + gpu.lower().replace("nvidia ", "").split()[0]
        driver = gpu_driver()
    else:
        gpu, name, driver = platform.processor() or platform.machine(), "cpu", "none"
    return {
        "name": name,
        "gpu": gpu,
        "driver": driver,
        "copy_bandwidth_gbps": copy_bandwidth_gbps,
        "count": 1,
    }


def software_info() -> dict[str, str]:
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": str(torch.version.cuda),
        "python": platform.python_version(),
    }


class PhaseTimer:
    """Times fixed-shape callables: captured as CUDA graphs on a GPU, eager on the CPU."""

    def __init__(self, device: torch.device, grid: ProfileGrid, use_graphs: bool = True) -> None:
        self.device = device
        self.grid = grid
        self.use_graphs = use_graphs and device.type == "cuda"

    def time(self, fn: Callable[..., Any], *inputs: torch.Tensor) -> TimingStats:
        if self.use_graphs:
            # A private pool per graph: capturing into a shared pool after an earlier graph of it was freed trips
            # an allocator assertion (seen on torch 2.11).
            step = GraphedStep(fn, inputs)
            stats = time_callable(
                step.graph.replay, device=self.device, warmup=self.grid.warmup, iters=self.grid.iters
            )
            del step
            return stats
        return time_callable(
            lambda: fn(*inputs), device=self.device, warmup=self.grid.warmup, iters=self.grid.iters
        )


def _hidden(model: FastModel, query_tokens: int) -> torch.Tensor:
    return torch.randn(1, query_tokens, model.cfg.hidden_size, device=model.device, dtype=model.dtype)


def _positions(model: FastModel, kv_len: int, query_tokens: int) -> torch.Tensor:
    """The newest ``query_tokens`` positions of a ``kv_len``-long context: the live KV is exactly ``kv_len``."""
    return torch.arange(kv_len - query_tokens, kv_len, device=model.device)


def _entry(coords: dict[str, int], stats: TimingStats) -> dict[str, Any]:
    return {**coords, **stats.to_dict()}


@torch.inference_mode()
def profile_phases(
    model: FastModel,
    grid: ProfileGrid,
    *,
    use_graphs: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Measure every phase over the grid; the cache is filled with random K/V so attention reads real data."""
    report = progress or (lambda _msg: None)
    timer = PhaseTimer(model.device, grid, use_graphs)
    cache = _random_cache(model, max(grid.kv_lens))
    cfg = model.cfg
    phases: dict[str, list[dict[str, Any]]] = {
        "layers": [],
        "embed": [],
        "head": [],
        "ar_step": [],
        "p2p": [],
    }

    for query_tokens in grid.query_tokens:
        for kv_len in grid.kv_lens:
            for layers in stage_layer_counts(cfg.num_layers, grid.stage_counts):
                # The window the executor attends over at this live length (buckets of >= 256 slots).
                window = kv_bucket(kv_len, cache.max_len)

                def stage(hidden: torch.Tensor, positions: torch.Tensor, _n: int = layers, _w: int = window):
                    return model.forward_layers(hidden, positions, 0, _n, cache, kv_len=_w)[0]

                stats = timer.time(
                    stage, _hidden(model, query_tokens), _positions(model, kv_len, query_tokens)
                )
                phases["layers"].append(
                    _entry({"layers": layers, "query_tokens": query_tokens, "kv_len": kv_len}, stats)
                )
                report(f"layers={layers} q={query_tokens} kv={kv_len}: {stats.median_us:.1f} us")

    for kv_len in grid.kv_lens:

        def ar_step(
            token: torch.Tensor, position: torch.Tensor, _w: int = kv_bucket(kv_len, cache.max_len)
        ) -> torch.Tensor:
            hidden, _ = model.forward_layers(
                model.embed(token), position, 0, cfg.num_layers, cache, kv_len=_w
            )
            return model.head(hidden)[:, -1].argmax(dim=-1)

        token = torch.randint(0, cfg.vocab_size, (1, 1), device=model.device)
        stats = timer.time(ar_step, token, _positions(model, kv_len, 1))
        phases["ar_step"].append(_entry({"kv_len": kv_len}, stats))
        report(f"ar_step kv={kv_len}: {stats.median_us:.1f} us")

    def verify(hidden: torch.Tensor, drafted: torch.Tensor) -> torch.Tensor:
        predicted = model.head(hidden).argmax(dim=-1)
        matches = (predicted[:, :-1] == drafted).to(torch.int32)
        return matches.cumprod(dim=-1).sum(dim=-1)

    for query_tokens in grid.head_query_tokens:
        drafted = torch.randint(0, cfg.vocab_size, (1, query_tokens - 1), device=model.device)
        stats = timer.time(verify, _hidden(model, query_tokens), drafted)
        phases["head"].append(_entry({"query_tokens": query_tokens}, stats))
        tokens = torch.randint(0, cfg.vocab_size, (1, query_tokens), device=model.device)
        stats = timer.time(model.embed, tokens)
        phases["embed"].append(_entry({"query_tokens": query_tokens}, stats))
        src = _hidden(model, query_tokens)
        dst = torch.empty_like(src)
        stats = time_callable(
            lambda _d=dst, _s=src: _d.copy_(_s), device=model.device, warmup=grid.warmup, iters=grid.iters
        )
        phases["p2p"].append(_entry({"bytes": src.numel() * src.element_size()}, stats))
        report(f"head/embed/p2p q={query_tokens}: {phases['head'][-1]['median_us']:.1f} us")
    phases["host_issue"] = profile_host_issue(model, cache, grid, timer.use_graphs)
    issue = ", ".join(f"{entry['graphs']}: {entry['median_us']:.1f}" for entry in phases["host_issue"])
    report(f"host_issue (graphs: us): {issue}")
    phases.update(_stream_overlap_phase(model, cache, grid, timer.use_graphs, report))
    if grid.spec_layers:
        phases["drafter"] = profile_spd_drafter(model, grid, report, use_graphs)
    hybrid = getattr(model, "is_hybrid", False)  # no EAGLE-3 head on the Qwen3.5 hybrid yet (dispatch.py)
    if grid.chain_draft and not hybrid:
        phases["chain_draft"] = profile_chain_draft(model, grid, report)
    return phases


@torch.inference_mode()
def profile_missing_phases(
    model: FastModel,
    grid: ProfileGrid,
    have: Collection[str],
    *,
    use_graphs: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The phases a finished bundle holding ``have`` can gain later without re-measuring the rest (its runs stay
    valid), measured as ``profile_phases`` measures them: ``stream_overlap``, which older bundles predate
    (`studies/fidelity_1gpu/measure.py --resume`, on the same GPU kind)."""
    if "stream_overlap" in have:
        return {}
    cache = _random_cache(model, max(grid.kv_lens))
    return _stream_overlap_phase(model, cache, grid, use_graphs, progress or (lambda _msg: None))


def _random_cache(model: FastModel, max_len: int) -> KVCache:
    """A cache filled with random K/V, so attention reads real data."""
    cache: KVCache = model.new_cache(max_len)
    for keys, values in zip(cache.keys, cache.values, strict=True):
        keys.normal_()
        values.normal_()
    return cache


def _stream_overlap_phase(
    model: FastModel, cache: KVCache, grid: ProfileGrid, use_graphs: bool, report: Callable[[str], None]
) -> dict[str, list[dict[str, Any]]]:
    overlap = profile_stream_overlap(
        model,
        cache,
        min(grid.kv_lens),
        grid.stage_counts,
        warmup=grid.warmup,
        iters=grid.iters,
        use_graphs=use_graphs,
    )
    if not overlap:  # a model of one layer has no two disjoint streams
        return {}
    factors = ", ".join(f"{entry['streams']}: {entry['median_us'] / 1000:.2f}" for entry in overlap)
    report(f"stream_overlap (streams: c): {factors}")
    return {"stream_overlap": overlap}


def profile_host_issue(
    model: FastModel,
    cache: KVCache,
    grid: ProfileGrid,
    use_graphs: bool,
    counts: tuple[int, ...] = (1, 2, 4, 8),
) -> list[dict[str, Any]]:
    """Host microseconds to launch ``g`` one-layer graphs back to back, each with its input copy, and no sync.

    This is the host's share of a cycle once it runs ahead of the device: it is hidden while it stays below the
    device time of the cycle. Eager on the CPU (there it includes the compute)."""
    hidden, positions = _hidden(model, 1), _positions(model, min(grid.kv_lens), 1)
    window = kv_bucket(min(grid.kv_lens), cache.max_len)

    def layer(h: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return model.forward_layers(h, p, 0, 1, cache, kv_len=window)[0]

    steps = [GraphedStep(layer, (hidden, positions)) if use_graphs else layer for _ in range(max(counts))]
    entries = []
    for count in counts:
        samples_us = []
        for i in range(grid.warmup + grid.iters):
            if model.device.type == "cuda":
                torch.cuda.synchronize(model.device)
            start = time.perf_counter()
            for step in steps[:count]:
                step(hidden, positions)
            elapsed_us = (time.perf_counter() - start) * 1e6
            if i >= grid.warmup:
                samples_us.append(elapsed_us)
        entries.append(_entry({"graphs": count}, TimingStats.from_samples(samples_us)))
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    return entries


def _head_timer(model: FastModel, grid: ProfileGrid) -> Callable[[Callable[[], Any]], TimingStats]:
    return lambda fn: time_callable(fn, device=model.device, warmup=grid.warmup, iters=grid.iters)


@torch.inference_mode()
def profile_spd_drafter(
    model: FastModel, grid: ProfileGrid, report: Callable[[str], None], use_graphs: bool = True
) -> list[dict[str, Any]]:
    """One PDM forward as the SPD schedule runs it, untrained weights: n + 1 rows (the pending deepest row and
    one per in-flight depth) through aggr_projs, L_s spec layers over a ``kv_len``-long spec cache, and the draft
    lm_head; ``query_tokens`` = n + 1. The schedule's fast drafter (``executor.heads.fast_spd``: fused weights,
    static position-masked cache, the model's compiled layer function), captured as a graph on a GPU."""
    from executor.heads.fast_spd import FastSpdDrafter
    from executor.heads.layers import base_config_of
    from executor.heads.spd_v11 import SpdHeadConfig, SpeculationModuleV11, reachable_aggr_feature_bound

    base = base_config_of(model)
    lm_head = model.lm_head_matrix
    timer = PhaseTimer(model.device, grid, use_graphs)
    entries = []
    for spec_layers in grid.spec_layers:
        for n in grid.stage_counts:
            if n > model.num_layers:
                continue
            split = uneven_counts(model.num_layers, n)
            bound = reachable_aggr_feature_bound(model.num_layers, split)
            head = SpdHeadConfig.build(base, n, spec_layers, bound, stage_layers=split)
            drafter = SpeculationModuleV11(base, head).to(device=model.device, dtype=model.dtype).eval()
            drafter.attach_base(model.norm.detach().float().cpu(), lm_head.detach().float().cpu())
            drafter.to(device=model.device, dtype=model.dtype)
            fast = FastSpdDrafter(drafter, model, max(grid.kv_lens) + n + 2)
            hidden = model.cfg.hidden_size
            feats = torch.randn(n + 1, fast.num_types, hidden, device=model.device, dtype=model.dtype)
            types = fast.row_types(True, n)
            for kv_len in grid.kv_lens:
                # kv_len committed spec positions, then the n + 1 rows (the model's context covers them).
                positions = torch.arange(kv_len, kv_len + n + 1, device=model.device)
                new_position = positions[-1:] + 1
                step = fast.step_fn(fast.window(kv_len + n), synthetic=False, want_logits=False)
                stats = timer.time(step, feats, types, positions, new_position)
                coords = {"spec_layers": spec_layers, "query_tokens": n + 1, "kv_len": kv_len}
                entries.append(_entry(coords, stats))
                report(f"drafter L_s={spec_layers} n={n} kv={kv_len}: {stats.median_us:.1f} us")
            del drafter, fast
    return entries


@torch.inference_mode()
def profile_chain_draft(
    model: FastModel, grid: ProfileGrid, report: Callable[[str], None]
) -> list[dict[str, Any]]:
    """One serial EAGLE-3-style draft pass (one decoder layer on one token, draft lm_head, argmax) at ``kv_len``
    cached head positions, as the chain schedule runs it: the functional head step (``FastEagle3``) over a
    position-masked static cache, graph-captured on a GPU (compiled layers when the model is compiled)."""
    from executor.heads.eagle3 import Eagle3Head, Eagle3HeadConfig, FastEagle3, draft_vocabulary
    from executor.heads.layers import base_config_of

    base = base_config_of(model)
    ids = draft_vocabulary(base.vocab_size, DRAFT_VOCAB_SIZE)  # as the chain schedule's random head
    head = Eagle3Head(base, Eagle3HeadConfig.build(base, draft_token_ids=ids))
    head = head.to(device=model.device, dtype=model.dtype).eval()
    fast = FastEagle3.from_head(head, model)
    hidden, embeds = _hidden(model, 1), _hidden(model, 1)
    timer = PhaseTimer(model.device, grid)
    entries = []
    for kv_len in grid.kv_lens:
        head_cache = fast.new_cache(kv_len + 2)
        window = kv_bucket(kv_len + 1, head_cache.max_len)

        def one_pass(
            h: torch.Tensor, e: torch.Tensor, p: torch.Tensor, _c=head_cache, _w=window
        ) -> torch.Tensor:
            _, logits = fast.step(h, e, p, _c, _w)
            return logits[:, -1].argmax(-1)

        stats = timer.time(one_pass, hidden, embeds, torch.tensor([kv_len], device=model.device))
        entries.append(_entry({"draft_layers": 1, "kv_len": kv_len}, stats))
        report(f"chain_draft kv={kv_len}: {stats.median_us:.1f} us")
    return entries


def build_bundle(
    *,
    model_name: str,
    model: FastModel,
    phases: dict[str, list[dict[str, Any]]],
    hardware: dict[str, Any],
    source: str,
    date: str | None = None,
) -> dict[str, Any]:
    """Assemble and validate a schema-v1 profile bundle."""
    bundle = {
        "schema_version": SCHEMA_VERSION,
        "kind": PROFILE_KIND,
        "hardware": hardware,
        "model": model_shape(model_name, model),
        "dtype": str(model.dtype).replace("torch.", ""),
        "software": software_info(),
        "date": date or datetime.date.today().isoformat(),
        "source": source,
        "phases": phases,
    }
    return validate_profile(bundle)


def write_bundle(path: str | Path, bundle: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename) so a failed run leaves no half-written profile."""
    from spdsim.contract import write_text_file

    return write_text_file(path, json.dumps(bundle, indent=1) + "\n")
