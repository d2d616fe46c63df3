"""One frozen target forward per training batch: the anchor features every head reads and the teacher logits.

Partial pipeline states are exact prefixes of the full forward's layer stack (causal model), so one pass gives
every depth's features (docs/spd.md §3). Features are pre-final-norm, as the executor's stage forwards
record them at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TeacherBatch:
    tokens: torch.Tensor  # [B, S]
    features: dict[int, torch.Tensor]  # HF hidden-state index -> [B, S, H]
    logits: torch.Tensor  # [B, S, V] float32; row t is the target's distribution for token t+1


@torch.no_grad()
def teacher_forward(model, tokens: torch.Tensor, collect: tuple[int, ...]) -> TeacherBatch:
    """Run the fast target over ``tokens [B, S]`` (positions 0..S−1) collecting the hidden states ``collect``."""
    batch, length = tokens.shape
    cache = model.new_cache(length, batch_size=batch)
    positions = torch.arange(length, device=tokens.device)
    hidden, features = model.forward_layers(
        model.embed(tokens), positions, 0, model.num_layers, cache, collect=collect, kv_len=length
    )
    return TeacherBatch(tokens, features, model.head(hidden))


def restrict_to_draft_vocab(logits: torch.Tensor, draft_token_ids: torch.Tensor | None) -> torch.Tensor:
    """Teacher logits over the draft vocabulary only (softmax then renormalises over it)."""
    return logits if draft_token_ids is None else logits.index_select(-1, draft_token_ids)


def distillation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """Mean over kept rows of KL(softmax(teacher) ‖ softmax(student)) (T = 1)."""
    student = torch.log_softmax(student_logits.float(), dim=-1)[keep]
    teacher = torch.log_softmax(teacher_logits.float(), dim=-1)[keep]
    per_row = (teacher.exp() * (teacher - student)).sum(-1)
    return per_row.mean()


def top1_agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor, keep: torch.Tensor) -> float:
    agree = student_logits.argmax(-1) == teacher_logits.argmax(-1)
    return float(agree[keep].float().mean())
