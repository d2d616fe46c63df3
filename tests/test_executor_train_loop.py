"""Shared training loop: LR schedule, step/time budgets, determinism."""

import torch

from executor.train.loop import LoopConfig, learning_rate, run_training


def test_learning_rate_warms_up_then_decays_to_the_floor():
    config = LoopConfig(max_steps=100, minutes=0, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(config, 0, 0.0) == 0.1 * (1 - 0.9 * 0.0)
    assert learning_rate(config, 9, 0.0) == 1.0 * (1 - 0.9 * 0.09)
    assert abs(learning_rate(config, 100, 0.0) - 0.1) < 1e-12
    timed = LoopConfig(max_steps=100, minutes=1.0, lr=1.0, warmup_steps=1, min_lr_ratio=0.1)
    assert abs(learning_rate(timed, 10, 60.0) - 0.1) < 1e-12  # the time budget drives the decay too


def quadratic_run(config):
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.zeros(4))
    blocks = torch.arange(40, dtype=torch.long).view(10, 4)

    def objective(batch):
        target = batch.float().mean(0) / 40
        loss = ((weight - target) ** 2).sum()
        return loss, {"loss": float(loss.detach())}

    return run_training([weight], objective, blocks, config, torch.device("cpu"), show_progress=False)


def test_same_seed_same_losses_and_budgets_stop_the_loop():
    config = LoopConfig(max_steps=30, minutes=0, batch_size=2, lr=0.05, warmup_steps=1, seed=3)
    first, second = quadratic_run(config), quadratic_run(config)
    assert first.losses == second.losses and first.steps == 30 and first.stopped_by == "steps"
    assert first.losses[-1] < first.losses[0]
    other = quadratic_run(LoopConfig(max_steps=30, minutes=0, batch_size=2, lr=0.05, warmup_steps=1, seed=4))
    assert other.losses != first.losses
    timed = quadratic_run(LoopConfig(max_steps=10**6, minutes=0.002, batch_size=2, lr=0.05))
    assert timed.stopped_by == "time" and 0 < timed.steps < 10**6
