"""Distillation of the v11 SPD drafter (docs/spd.md §3).

Layout: m blocks of S rows, stage-major ``[g_{m-1}, …, g_0]``; block a = ``aggr_projs[a]`` of that type's anchors at
every position, position ids 0…S−1 in every block; all m·S rows go through every spec layer under a structural
mask; only the g_0 rows (the newest token's query) are decoded and trained (KL to the target's logits).

Structural mask. A query of type a_q stands for a row at depth d_q = aggr_to_min_depth[a_q]; the key at distance
j = t − T ≥ 0 is then the token at depth d_q + j, so it may be attended only in the block of the type the schedule
gives that depth: A(min(n, d_q + j)), or the deepest type m−1 once the key counts as complete under the simulated
fill f. Rule "reference" (the default, `_build_pipeline_training_structural_mask_v11`): complete iff j ≥ f. Rule
"depth" (ours, kept as an option): complete iff d_q + j ≥ f, the depth the executor's schedule really gives a key
of a deeper row. Both agree for the g_0 queries (d_q = 0), the only rows that are decoded.
Simulated fill: per sequence, 50 % saturated (f = n), 50 % f ~ U{1, …, n−1} (post-rejection refill states).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from executor.heads.spd_v11 import SpeculationModuleV11
from executor.train.features import (
    TeacherBatch,
    distillation_kl,
    restrict_to_draft_vocab,
    teacher_forward,
    top1_agreement,
)
from spdsim.contract import SpdsimError

MASK_RULES = ("reference", "depth")


def key_type(aggr_of_depth: tuple[int, ...], depth: int, fill: int) -> int:
    """Aggregation type of a token at ``depth`` when ``fill`` tokens are in flight (deeper ones are complete)."""
    deepest = max(aggr_of_depth)
    num_stages = len(aggr_of_depth) - 1
    return deepest if depth >= fill else aggr_of_depth[min(num_stages, depth)]


def structural_mask(
    aggr_of_depth: tuple[int, ...],
    aggr_to_min_depth: tuple[int, ...],
    seq_len: int,
    fill: int,
    device=None,
    rule: str = "reference",
) -> torch.Tensor:
    """Boolean ``[m·S, m·S]`` (True = may attend) for the stage-major layout ``[g_{m-1}, …, g_0]``."""
    if rule not in MASK_RULES:
        raise SpdsimError(f"mask_rule: unknown '{rule}' (allowed: {', '.join(MASK_RULES)})")
    num_types = len(aggr_to_min_depth)
    num_stages = len(aggr_of_depth) - 1
    block_type = torch.arange(num_types - 1, -1, -1, device=device).repeat_interleave(seq_len)
    position = torch.arange(seq_len, device=device).repeat(num_types)
    min_depth = torch.tensor(aggr_to_min_depth, device=device)
    by_depth = torch.tensor(aggr_of_depth, device=device)
    q_depth = min_depth[block_type][:, None]
    distance = position[:, None] - position[None, :]
    depth = q_depth + distance.clamp_min(0)
    complete = depth >= fill if rule == "depth" else distance >= fill
    expected = torch.where(
        complete,
        torch.full_like(depth, max(aggr_of_depth)),
        by_depth[depth.clamp(max=num_stages)],
    )
    return (distance >= 0) & (block_type[None, :] == expected)


def sample_fills(batch: int, num_stages: int, generator: torch.Generator) -> list[int]:
    """50 % saturated (f = n), 50 % f ~ U{1, …, n−1}; n = 1 is always saturated."""
    fills = []
    for _ in range(batch):
        saturated = num_stages == 1 or bool(torch.rand((), generator=generator) < 0.5)
        fills.append(num_stages if saturated else int(torch.randint(1, num_stages, (), generator=generator)))
    return fills


def training_rows(drafter: SpeculationModuleV11, features: dict[int, torch.Tensor]) -> torch.Tensor:
    """``[B, m·S, H]``: aggr_projs of every type at every position, deepest type first."""
    return torch.cat([drafter.project(a, features) for a in reversed(range(drafter.num_aggr_types))], dim=1)


def batch_mask(
    drafter: SpeculationModuleV11, seq_len: int, fills: list[int], device, rule: str = "reference"
) -> torch.Tensor:
    """``[B, 1, m·S, m·S]``: one structural mask per sequence (its own simulated fill)."""
    cache: dict[int, torch.Tensor] = {}
    for fill in set(fills):
        cache[fill] = structural_mask(
            drafter.aggr_of_depth, drafter.aggr_to_min_depth, seq_len, fill, device=device, rule=rule
        )
    return torch.stack([cache[f] for f in fills])[:, None]


def g0_logits(
    drafter: SpeculationModuleV11,
    features: dict[int, torch.Tensor],
    fills: list[int],
    rule: str = "reference",
) -> torch.Tensor:
    """Draft logits ``[B, S, V_d]`` of the newest-token (g_0) rows under the structural mask."""
    rows = training_rows(drafter, features)
    seq_len = rows.shape[1] // drafter.num_aggr_types
    positions = torch.arange(seq_len, device=rows.device).repeat(drafter.num_aggr_types)
    mask = batch_mask(drafter, seq_len, fills, rows.device, rule)
    hidden = drafter.run_layers(rows, positions, attn_mask=mask)
    return drafter.draft_logits(hidden[:, -seq_len:])


@dataclass
class SpdObjective:
    """Loss of one batch of token blocks: teacher forward, structural-mask drafter forward, KL on g_0 rows."""

    model: object  # FastModel (frozen target)
    drafter: SpeculationModuleV11
    generator: torch.Generator
    mask_rule: str = "reference"

    def __call__(self, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        teacher = teacher_forward(self.model, tokens, self.drafter.anchor_indices)
        return self.loss(teacher)

    def loss(self, teacher: TeacherBatch) -> tuple[torch.Tensor, dict[str, float]]:
        n = self.drafter.head_config.num_stages
        fills = sample_fills(teacher.tokens.shape[0], n, self.generator)
        student = g0_logits(self.drafter, teacher.features, fills, self.mask_rule)
        ids = None if self.drafter.head_config.draft_token_ids is None else self.drafter.draft_token_ids
        target = restrict_to_draft_vocab(teacher.logits, ids)
        keep = torch.ones(student.shape[:2], dtype=torch.bool, device=student.device)
        if ids is not None:  # the reference keeps only rows whose teacher argmax is in the draft vocabulary
            keep = torch.isin(teacher.logits.argmax(-1), ids)
        loss = distillation_kl(student, target, keep)
        return loss, {"kl": float(loss.detach()), "top1": top1_agreement(student, target, keep)}
