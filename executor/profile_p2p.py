"""Point-to-point latency and bandwidth between two ranks -> "p2p" phase entries measured across devices.

``executor.profile`` can only stand in for the pipeline's hidden-state send with a copy on one GPU; this measures
the real thing between two launched ranks (one GPU each with NCCL, gloo threads on the CPU, the same code). A
message goes rank 0 -> rank 1 and back (ping-pong), each half posted as one batched isend/irecv group, as
``executor.distributed.comm.Link.exchange`` posts every p2p op of a run. Rank 0 times each round trip (CUDA events
on a GPU, the host clock on the CPU) and halves it: one-way µs. No host sync between round trips: large messages
measure the link; for small ones, where Python issues the ops more slowly than NVLink carries them, the time also
holds the hosts' issue of the ops, as the pipeline pays it per message (what ``predict.py`` assumes as
"nccl_p2p_us").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from executor.timing import IntervalRecorder, TimingStats

LARGE_BYTES = 1 << 20  # messages from this size on are timed with ``P2PSpec.large_iters`` round trips


@dataclass(frozen=True)
class Message:
    """One message shape: ``numel`` elements of ``dtype`` (a torch dtype name), named for the report."""

    label: str
    numel: int
    dtype: str = "bfloat16"

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty(0, dtype=getattr(torch, self.dtype)).element_size()


@dataclass(frozen=True)
class P2PSpec:
    messages: tuple[Message, ...]
    warmup: int = 10
    iters: int = 100
    large_iters: int = 20
    timeout_s: float = 60.0


@dataclass(frozen=True)
class PairRoles:
    """Rank names for the launcher's one-line errors (``launch_ranks`` needs ``world_size`` and ``name``)."""

    world_size: int = 2

    def name(self, rank: int) -> str:
        return f"rank {rank} ({'timer' if rank == 0 else 'echo'})"


def bandwidth_messages(sizes_mib: tuple[int, ...]) -> tuple[Message, ...]:
    """Large bf16 messages for the bandwidth end of the curve."""
    return tuple(Message(f"{mib} MiB", mib * (1 << 20) // 2) for mib in sizes_mib)


def profile_p2p(spec: P2PSpec, backend: str = "auto") -> list[dict[str, Any]]:
    """One entry per message: ``label``, ``bytes``, one-way ``median_us``/``p10_us``/``p90_us``/``samples`` and
    ``gbps`` (bytes over the median one-way time, 1e9); two freshly launched ranks."""
    from executor.distributed.launch import launch_ranks, pick_backend

    chosen = pick_backend(backend, 2)
    return launch_ranks(_p2p_rank, PairRoles(), (chosen, spec))


def _p2p_rank(rank, port, backend, spec: P2PSpec, results) -> None:
    import torch.distributed as dist

    from executor.distributed.launch import fail_rank, init_rank

    name = PairRoles().name(rank)
    try:
        device = init_rank(rank, port, backend, 2, spec.timeout_s + 60)
        entries = [_time_message(rank, device, message, spec) for message in spec.messages]
        dist.barrier()
        results.put(("result", rank, entries) if rank == 0 else ("done", rank, None))
        dist.destroy_process_group()
    except Exception as exc:
        fail_rank(results, rank, name, exc)


def _time_message(rank: int, device, message: Message, spec: P2PSpec) -> dict[str, Any]:
    tensor = torch.zeros(message.numel, dtype=getattr(torch, message.dtype), device=device)
    iters = spec.large_iters if message.nbytes >= LARGE_BYTES else spec.iters
    for _ in range(spec.warmup):
        _round_trip(rank, tensor, spec.timeout_s)
    recorder = IntervalRecorder(device)
    for _ in range(iters):
        if rank == 0:
            recorder.start()
        _round_trip(rank, tensor, spec.timeout_s)
        if rank == 0:
            recorder.stop()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if rank != 0:
        return {}
    stats = TimingStats.from_samples([t / 2 for t in recorder.intervals_us()])
    gbps = message.nbytes / stats.median_us / 1e3 if stats.median_us > 0 else float("nan")
    return {"label": message.label, "bytes": message.nbytes, **stats.to_dict(), "gbps": gbps}


def _round_trip(rank: int, tensor: torch.Tensor, timeout_s: float) -> None:
    """Rank 0 sends then receives, rank 1 receives then sends back; each op its own group (as ``Link``)."""
    import torch.distributed as dist

    order = (dist.isend, dist.irecv) if rank == 0 else (dist.irecv, dist.isend)
    for op in order:
        for work in dist.batch_isend_irecv([dist.P2POp(op, tensor, 1 - rank)]):
            if tensor.is_cuda:
                work.wait()  # stream-ordered: the host goes on
            else:
                work.wait(timeout=timedelta(seconds=timeout_s))
