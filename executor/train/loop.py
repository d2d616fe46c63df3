"""The AdamW loop every head shares: seeded block order, warmup + linear decay, gradient clipping, bf16 autocast
on CUDA, a step budget and a wall-clock budget, and a progress bar.

The learning-rate schedule follows progress = max(step / max_steps, elapsed / budget), so a run cut by its time
budget still decays to its floor. Same seed and no time budget (minutes = 0): the same steps in the same order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from spdsim.contract import SpdsimError


@dataclass(frozen=True)
class LoopConfig:
    max_steps: int = 4000
    minutes: float = 10.0  # wall-clock budget; 0 = none
    batch_size: int = 8
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1:
            raise SpdsimError(f"steps and batch size must be >= 1 (got {self.max_steps}, {self.batch_size})")
        if self.minutes < 0 or not self.lr > 0:
            raise SpdsimError(f"minutes must be >= 0 and lr > 0 (got {self.minutes}, {self.lr})")


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by: str = "steps"

    @property
    def steps(self) -> int:
        return len(self.losses)

    def summary(self, tail: int = 50) -> dict:
        last = self.metrics[-tail:]
        keys = sorted({k for m in last for k in m})
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 1),
            "stopped_by": self.stopped_by,
            "first_loss": self.losses[0] if self.losses else None,
            "final_loss_mean": sum(self.losses[-tail:]) / max(1, len(self.losses[-tail:])),
            "final_metrics_mean": {k: sum(m.get(k, 0.0) for m in last) / len(last) for k in keys},
        }


def learning_rate(config: LoopConfig, step: int, elapsed_s: float) -> float:
    warm = min(1.0, (step + 1) / max(1, config.warmup_steps))
    progress = step / config.max_steps
    if config.minutes > 0:
        progress = max(progress, elapsed_s / (60.0 * config.minutes))
    decay = 1.0 - (1.0 - config.min_lr_ratio) * min(1.0, progress)
    return config.lr * warm * decay


def block_order(num_blocks: int, seed: int):
    """Endless seeded permutations of the block indices."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.randperm(num_blocks, generator=generator).tolist()


def run_training(
    params: list[torch.nn.Parameter],
    objective: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]],
    blocks: torch.Tensor,
    config: LoopConfig,
    device: torch.device,
    show_progress: bool = True,
) -> TrainLog:
    """Optimise ``params`` on ``objective(batch_of_blocks)`` until the step or time budget runs out."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    config.validate()
    if blocks.shape[0] < 1:
        raise SpdsimError("training corpus has no blocks")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    order = block_order(blocks.shape[0], config.seed)
    log = TrainLog()
    start = time.perf_counter()
    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[metrics]}"))
    with Progress(
        *columns, console=Console(stderr=True), disable=not show_progress
    ) as bar:  # stderr, as tqdm
        task = bar.add_task("train", total=config.max_steps, metrics="")
        for step in range(config.max_steps):
            elapsed = time.perf_counter() - start
            if config.minutes > 0 and elapsed >= 60.0 * config.minutes:
                log.stopped_by = "time"
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step, elapsed)
            batch = blocks[[next(order) for _ in range(config.batch_size)]].to(device, non_blocking=True)
            with autocast:
                loss, metrics = objective(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            log.losses.append(float(loss.detach()))
            log.metrics.append(metrics)
            bar.advance(task)
            if step % 10 == 0:
                shown = " ".join(f"{k}={v:.3f}" for k, v in list(metrics.items())[:4])
                bar.update(task, metrics=shown)
    log.seconds = time.perf_counter() - start
    return log
