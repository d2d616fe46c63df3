"""Microbenchmarks for tensor-parallel decoding -> profile phases ``layers_tp`` and ``allreduce``.

* ``profile_layers_tp``: one rank's shard of ``layers`` decoder layers for d-way TP, on one GPU. A shard's
  arithmetic does not depend on the other ranks (they only add their partial sums), so every degree is measured
  on a single device, the all_reduces left out (they are the ``allreduce`` phase).
* ``profile_allreduce``: the shards' all_reduce across ``tp_degree`` launched ranks (NCCL, or gloo on the CPU)
  over message sizes ``bytes = query_tokens x hidden x element size``; timed on rank 0 as the decode step runs it
  (captured in a CUDA graph on GPUs).

Both return phase entries (coordinates + median/p10/p90/samples) for ``executor.profile.build_bundle``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from executor.cache import kv_bucket
from executor.fastmodel import FastModel
from executor.profile import PhaseTimer, ProfileGrid, _entry, _hidden, _positions
from executor.timing import time_callable


@torch.inference_mode()
def profile_layers_tp(
    model: FastModel,
    tp_degrees: tuple[int, ...] = (1, 2, 4, 8),
    *,
    layer_counts: tuple[int, ...] | None = None,
    query_tokens: tuple[int, ...] = (1,),
    kv_lens: tuple[int, ...] = (64, 256, 1024, 4096),
    use_graphs: bool = True,
    warmup: int = 5,
    iters: int = 50,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """``layers_tp`` entries: rank 0's shard (the ranks' shards have equal shapes) of ``layers`` layers on
    ``query_tokens`` tokens at ``kv_len`` live positions, per degree; ``layer_counts`` default (1, all layers)."""
    from executor.distributed.tp import ShardedModel

    report = progress or (lambda _msg: None)
    counts = layer_counts or tuple(sorted({1, model.num_layers}))
    timer = PhaseTimer(model.device, ProfileGrid(warmup=warmup, iters=iters), use_graphs)
    entries = []
    for degree in tp_degrees:
        shard = ShardedModel(model, 0, degree)
        cache = shard.new_cache(max(kv_lens))
        for keys, values in zip(cache.keys, cache.values, strict=True):
            keys.normal_()
            values.normal_()
        for tokens in query_tokens:
            for kv_len in kv_lens:
                window = kv_bucket(kv_len, cache.max_len)
                for layers in counts:

                    def stage(hidden, positions, _n=layers, _w=window, _s=shard, _c=cache):
                        return _s.forward_layers(hidden, positions, 0, _n, _c, kv_len=_w)[0]

                    stats = timer.time(stage, _hidden(model, tokens), _positions(model, kv_len, tokens))
                    coords = {"layers": layers, "query_tokens": tokens, "kv_len": kv_len, "tp_degree": degree}
                    entries.append(_entry(coords, stats))
                    report(
                        f"layers_tp d={degree} layers={layers} q={tokens} kv={kv_len}: {stats.median_us:.1f} us"
                    )
        del shard, cache
        if model.device.type == "cuda":
            torch.cuda.empty_cache()
    return entries


@dataclass(frozen=True)
class AllReduceSpec:
    tp_degree: int
    hidden_size: int
    query_tokens: tuple[int, ...]
    dtype: str
    use_graphs: bool
    warmup: int
    iters: int
    timeout_s: float


def profile_allreduce(
    tp_degree: int,
    hidden_size: int,
    *,
    query_tokens: tuple[int, ...] = (1, 2, 4, 8, 16, 64, 256),
    dtype: str = "bfloat16",
    backend: str = "auto",
    use_graphs: bool = True,
    warmup: int = 10,
    iters: int = 100,
    timeout_s: float = 60.0,
) -> list[dict[str, Any]]:
    """``allreduce`` entries of ``tp_degree`` freshly launched ranks (one GPU each with NCCL)."""
    from executor.distributed.launch import launch_ranks, pick_backend
    from executor.distributed.tp import TPRoles
    from spdsim.contract import SpdsimError

    if tp_degree < 2:
        raise SpdsimError(f"allreduce: needs tp_degree >= 2, got {tp_degree}")
    spec = AllReduceSpec(
        tp_degree, hidden_size, tuple(query_tokens), dtype, use_graphs, warmup, iters, timeout_s
    )
    chosen = pick_backend(backend, tp_degree)
    return launch_ranks(_allreduce_rank, TPRoles(tp_degree), (chosen, spec))


def _allreduce_rank(rank, port, backend, spec: AllReduceSpec, results) -> None:
    import torch.distributed as dist

    from executor.distributed.launch import fail_rank, init_rank
    from executor.distributed.tp import TPRoles, bounded_reduce
    from executor.graphs import GraphedStep
    from executor.models import _torch_dtype

    name = TPRoles(spec.tp_degree).name(rank)
    try:
        device = init_rank(rank, port, backend, spec.tp_degree, spec.timeout_s + 60)
        reduce = bounded_reduce(backend, name, spec.timeout_s)
        dtype = _torch_dtype(spec.dtype)
        entries = []
        for tokens in spec.query_tokens:
            message = torch.zeros(1, tokens, spec.hidden_size, device=device, dtype=dtype)
            if spec.use_graphs and device.type == "cuda":
                step = GraphedStep(reduce, (message,))
                stats = time_callable(step.graph.replay, device=device, warmup=spec.warmup, iters=spec.iters)
                del step
            else:
                stats = time_callable(
                    lambda _m=message: reduce(_m), device=device, warmup=spec.warmup, iters=spec.iters
                )
            nbytes = message.numel() * message.element_size()
            entries.append({"tp_degree": spec.tp_degree, "bytes": nbytes, **stats.to_dict()})
        dist.barrier()
        results.put(("result", rank, entries) if rank == 0 else ("done", rank, None))
        dist.destroy_process_group()
    except Exception as exc:
        fail_rank(results, rank, name, exc)
