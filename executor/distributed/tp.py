"""Megatron-style tensor-parallel AR decoding of the fast model (NCCL on GPUs, gloo on the CPU, the same code).

Each of the d ranks holds, for every layer, a column shard of the fused qkv (whole KV-head groups with their query
heads) and of gate_up, the matching row shards of o_proj and down, and a KV cache of its own KV heads. A layer is
then two partial products, each summed over the ranks by one all_reduce (after attention, after the MLP).
Embedding and lm_head are replicated. The reduced hidden state is the same on every rank, so every rank computes
the same logits and picks the same token (greedy, or the same seeded generator at T > 0): no token broadcast is
needed; rank 0 owns the output. The decode loop is the AR schedule's own (``generate_ar``).

Every wait is bounded: gloo all_reduces wait with a deadline; on a GPU a watchdog thread ends the rank when a step
(a captured graph with its NCCL all_reduces) has not finished within the timeout. A dead rank is named by the
launcher (``launch_ranks``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta

import torch

from executor.cache import KVCache, window_capacity
from executor.distributed.comm import OP_GO, Control, DistributedError, Watchdog
from executor.distributed.launch import (
    FAULTS,
    ModelSource,
    _fail,
    counted,
    fail_rank,
    init_rank,
    launch_ranks,
    pick_backend,
    rank_progress,
)
from executor.fastmodel import DecoderAPI, FastModel
from executor.graphs import GraphCache
from executor.layer_fns import LayerShape, LayerWeights, decoder_layer, head_logits, step_inputs
from executor.schedules.base import TIMED, WARMUP, PromptProgress, warms_up, warmup_prompts
from executor.schedules.common import DecodeOptions, Prompt, PromptRun, RunResult, as_prompts
from spdsim.contract import SpdsimError


@dataclass(frozen=True)
class TPRoles:
    """Rank names of a tensor-parallel group (what the launcher's supervisor prints)."""

    world_size: int

    def name(self, rank: int) -> str:
        return f"rank {rank} (tp shard {rank}{', output' if rank == 0 else ''})"


@dataclass(frozen=True)
class TPConfig:
    tp_degree: int
    backend: str = "auto"
    timeout_s: float = 60.0
    use_graphs: bool = True
    fault: tuple[str, int, int] | None = None  # ("kill" | "stall", rank, decode step): test hook
    warmup: bool | None = None  # untimed warm-up decodes first (`base.warms_up`: None is on for CUDA)


def check_tp_degree(cfg, degree: int) -> None:
    """Shards hold whole KV-head groups and equal MLP slices: every split must be even."""
    if degree < 1:
        raise SpdsimError(f"--tp: the tensor-parallel degree must be >= 1, got {degree}")
    for name, value in (
        ("num_attention_heads", cfg.num_heads),
        ("num_kv_heads", cfg.num_kv_heads),
        ("intermediate_size", cfg.intermediate_size),
    ):
        if value % degree:
            raise SpdsimError(f"--tp {degree}: the model's {name} ({value}) is not divisible by {degree}")


def shard_layer(w: LayerWeights, cfg, rank: int, degree: int) -> LayerWeights:
    """Rank ``rank``'s slices of one fused layer (copies, so the full weights can be freed)."""
    q_all, kv_all, inter = (
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
        cfg.intermediate_size,
    )
    q_rows, kv_rows, i_rows = q_all // degree, kv_all // degree, inter // degree

    def rows(tensor, offset, size):
        return tensor[offset + rank * size : offset + (rank + 1) * size]

    def qkv_rows(tensor):
        return torch.cat(
            (rows(tensor, 0, q_rows), rows(tensor, q_all, kv_rows), rows(tensor, q_all + kv_all, kv_rows))
        )

    return LayerWeights(
        input_norm=w.input_norm,
        qkv=qkv_rows(w.qkv).contiguous(),
        qkv_bias=None if w.qkv_bias is None else qkv_rows(w.qkv_bias).contiguous(),
        q_norm=w.q_norm,
        k_norm=w.k_norm,
        o_proj=w.o_proj[:, rank * q_rows : (rank + 1) * q_rows].contiguous(),
        post_norm=w.post_norm,
        gate_up=torch.cat((rows(w.gate_up, 0, i_rows), rows(w.gate_up, inter, i_rows))).contiguous(),
        down=w.down[:, rank * i_rows : (rank + 1) * i_rows].contiguous(),
    )


class ShardedModel(DecoderAPI):
    """One rank's shard of a FastModel for ``degree``-way TP, with the FastModel API the AR schedule uses
    (``new_cache``, ``embed``, ``forward_layers``, ``head``, calling it = ``forward``). ``reduce`` sums a partial
    output over the ranks; None: no sum (the single-GPU shard microbenchmark)."""

    def __init__(self, model: FastModel, rank: int, degree: int, reduce=None):
        cfg = model.cfg
        check_tp_degree(cfg, degree)
        self.cfg, self.rank, self.degree = cfg, rank, degree
        self.shape = LayerShape(
            cfg.num_heads // degree, cfg.num_kv_heads // degree, cfg.head_dim, cfg.rms_norm_eps
        )
        self.layers = [shard_layer(model.layer_weights(i), cfg, rank, degree) for i in range(cfg.num_layers)]
        self.embed_tokens = model.embed_tokens
        self.norm = model.norm
        self.lm_head_weight = model.lm_head_matrix
        self.rope_cos, self.rope_sin = model.rope_cos, model.rope_sin
        self.max_seq_len = model.max_seq_len
        self.reduce = reduce

    def new_cache(self, max_len: int) -> KVCache:
        kv_heads = self.shape.num_kv_heads
        max_len = window_capacity(max_len, self.max_seq_len)
        return KVCache(
            self.num_layers, kv_heads, self.cfg.head_dim, max_len, device=self.device, dtype=self.dtype
        )

    def layer_weights(self, index: int) -> LayerWeights:
        return self.layers[index]

    def layer_functions(self, query_tokens: int):
        """Always eager: the fast model's layer with this rank's all_reduce of its two partial outputs."""
        return functools.partial(decoder_layer, reduce=self.reduce), step_inputs

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return head_logits(hidden, self.norm, self.lm_head_weight, self.cfg.rms_norm_eps)

    __call__ = DecoderAPI.forward


def bounded_reduce(backend: str, name: str, timeout_s: float):
    """The all_reduce of the shards: in-stream on NCCL (graph-capturable; the step watchdog bounds it), with a
    deadline on gloo (an error names this rank; the launcher names a dead peer)."""
    import torch.distributed as dist

    if backend == "nccl":

        def nccl_reduce(tensor: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(tensor)
            return tensor

        return nccl_reduce

    def gloo_reduce(tensor: torch.Tensor) -> torch.Tensor:
        work = dist.all_reduce(tensor, async_op=True)
        try:
            work.wait(timeout=timedelta(seconds=timeout_s))
        except Exception as exc:
            text = " ".join(str(exc).split())
            if "timed out" in text.lower() or "timeout" in text.lower():
                raise DistributedError(
                    f"{name}: all_reduce did not complete within {timeout_s:g} s (a peer is dead or stuck)"
                ) from None
            raise DistributedError(f"{name}: all_reduce failed, a peer is gone: {text[:160]}") from None
        return tensor

    return gloo_reduce


def step_watch(watchdog: Watchdog, name: str, timeout_s: float) -> Callable[[], None]:
    """GPU only: after each step, bound it by ``watchdog`` (graph replays hold NCCL all_reduces that no host wait
    covers): the rank fails when a step has not finished ``timeout_s`` after its launch."""
    message = f"{name}: decode step did not finish within {timeout_s:g} s (a peer is dead or stuck)"

    def mark() -> None:
        event = torch.cuda.Event()
        event.record()
        watchdog.watch(event.query, message, timeout_s)

    return mark


class WatchedGraphCache(GraphCache):
    """The AR schedule's graph cache with a per-step hook: the step's watch (GPU) and fault injection (tests)."""

    def __init__(self, enabled: bool, on_step: Callable[[], None] | None, fault: tuple[str, int, int] | None):
        super().__init__(enabled=enabled)
        self.on_step, self.fault, self.steps = on_step, fault, 0

    def run(self, key, fn, *inputs):
        if self.fault is not None and self.steps == self.fault[2]:
            from executor.distributed.worker import fault_point

            fault_point(self.fault, Control(OP_GO, cycle=self.steps))
        self.steps += 1
        out = super().run(key, fn, *inputs)
        if self.on_step is not None:
            self.on_step()
        return out


def decode_sharded(
    shard: ShardedModel,
    prompts,
    options: DecodeOptions,
    graphs: GraphCache,
    progress: PromptProgress | None = None,
    warm: tuple[Prompt, ...] = (),
) -> tuple[PromptRun, ...]:
    """The AR schedule (``generate_ar``) on a shard: one cache and one graph set for all prompts, as ``run_ar``;
    ``warm`` decoded untimed first (`base.warmup_prompts`); ``progress``: `base.decode_each`."""
    from executor.schedules.dispatch import ar_prompt_runs

    cache = shard.new_cache(max(len(p.tokens) for p in prompts) + options.max_new_tokens)
    ar_prompt_runs(shard, warm, options, cache, graphs, WARMUP, progress)
    return ar_prompt_runs(shard, prompts, options, cache, graphs, TIMED, progress)


def run_tensor_parallel(
    source: ModelSource,
    prompts,
    tp_degree: int,
    jobs: list[DecodeOptions],
    backend: str = "auto",
    timeout_s: float = 60.0,
    use_graphs: bool = True,
    fault: tuple[str, int, int] | None = None,
    progress: PromptProgress | None = None,
    warmup: bool | None = None,
) -> tuple[RunResult, ...]:
    """Decode ``prompts`` with AR on ``tp_degree`` tensor-parallel ranks, once per job; one RunResult per job
    (method "ar", config with ``tp_degree``), the run-directory format of single-GPU AR. ``progress`` hears rank
    0's prompts, every job's in one TIMED count (`base.decode_each`; None: the ranks send no reports).
    ``warmup``: untimed warm-up decodes before each job (None: on for CUDA, as single-GPU AR)."""
    if tp_degree < 1:
        raise SpdsimError(f"--tp: the tensor-parallel degree must be >= 1, got {tp_degree}")
    if fault is not None and fault[0] not in FAULTS:
        raise SpdsimError(f"fault: unknown '{fault[0]}' (allowed: {', '.join(FAULTS)})")
    for job in jobs:
        job.validate()
    config = TPConfig(tp_degree, backend, timeout_s, use_graphs, fault, warmup)
    prompt_list = as_prompts(prompts)
    chosen = pick_backend(backend, tp_degree)
    args = (chosen, source, prompt_list, config, list(jobs), progress is not None)
    return tuple(launch_ranks(_rank_main, TPRoles(tp_degree), args, progress))


def _rank_main(rank, port, backend, source, prompts, config: TPConfig, jobs, report, results) -> None:
    """One tensor-parallel rank (a spawned process); ``report``: rank 0 sends its progress."""
    import torch.distributed as dist

    roles = TPRoles(config.tp_degree)
    name = roles.name(rank)
    try:
        device = init_rank(rank, port, backend, roles.world_size, config.timeout_s + 60)
        watchdog = on_step = None
        if device.type == "cuda":
            watchdog = Watchdog(lambda message: _fail(results, rank, message), device=device)
            on_step = step_watch(watchdog, name, config.timeout_s)
        fault = config.fault if config.fault and config.fault[1] == rank else None
        with torch.inference_mode():
            model = source.build(device)
            shard = ShardedModel(
                model, rank, config.tp_degree, bounded_reduce(backend, name, config.timeout_s)
            )
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
            graphs = WatchedGraphCache(config.use_graphs, on_step, fault)
            progress = rank_progress(results, rank) if report and rank == 0 else None
            warm = warmup_prompts(prompts) if warms_up(config.warmup, device) else ()
            runs = []
            for job in jobs:
                done = counted(progress, len(runs) * len(prompts), len(jobs) * len(prompts))
                prompt_runs = decode_sharded(shard, prompts, job, graphs, done, warm)
                run_config = {
                    "method": "ar",
                    **asdict(job),
                    "warmup_prompts": len(warm),
                    "tp_degree": config.tp_degree,
                    "distributed": True,
                    "world_size": roles.world_size,
                    "backend": backend,
                    "use_graphs": graphs.enabled,
                }
                runs.append(RunResult("ar", run_config, prompt_runs, str(device)))
        if watchdog is not None:
            watchdog.close()
        results.put(("result", rank, runs) if rank == 0 else ("done", rank, None))
        dist.destroy_process_group()
    except Exception as exc:
        fail_rank(results, rank, name, exc)


def with_config(result: RunResult, **extra) -> RunResult:
    """A copy of ``result`` with more config fields (e.g. what the CLI knows: model, prompts)."""
    return dataclasses.replace(result, config={**result.config, **extra})
