"""SpecDec++ acceptance head on the (frozen, trained) EAGLE-3 chain head's hidden state (docs/baselines.md §3).

The chain head runs its training-time-test chains over the block (executor/train/eagle3.py): at step k the row
anchored at position r has the real prefix (every earlier draft accepted), so the target's logits at r + k + 1
are the true conditional. A candidate y ~ q (the head's draft distribution at temperature 1) gets the soft label
min(1, p(y)/q(y)); the acceptance head reads the chain head's output hidden of the row that produced q.
Mixing ratio r = 0.15: that fraction of entries takes the target's own token instead, with the loss masked out.
In the teacher-forced chain the prefix is the real text either way, so the ratio only thins the labels.
Loss: BCE with soft labels and class weights [w_mismatch, 1] for [reject, accept], normalised by
w_mismatch·Σ(1−p) + Σp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from executor.heads.eagle3 import Eagle3Head
from executor.heads.specdecpp import AcceptanceHead
from executor.train.eagle3 import step_targets, ttt_forward
from executor.train.features import teacher_forward


def soft_acceptance_labels(
    target_probs: torch.Tensor, draft_probs: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """min(1, p(y)/q(y)) for candidate tokens ``tokens [...]`` under p, q ``[..., V]``."""
    p = target_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    q = draft_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return torch.clamp(p / q.clamp_min(1e-30), max=1.0)


def weighted_soft_bce(
    logits: torch.Tensor, labels: torch.Tensor, weight_mismatch: float, keep: torch.Tensor
) -> torch.Tensor:
    """Σ −[w(1−p)·log(1−ŷ) + p·log ŷ] / (w·Σ(1−p) + Σp) over kept entries; logits ``[..., 2]``, index 1 = accept."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)[keep]
    p = labels.float()[keep]
    loss = -(weight_mismatch * (1 - p) * log_probs[:, 0] + p * log_probs[:, 1]).sum()
    return loss / (weight_mismatch * (1 - p).sum() + p.sum()).clamp_min(1e-6)


@dataclass
class SpecDecPPObjective:
    model: object
    chain_head: Eagle3Head  # frozen
    acceptance_head: AcceptanceHead
    generator: torch.Generator
    steps: int = 7
    weight_mismatch: float = 6.0
    mixing_ratio: float = 0.15

    def __call__(self, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        teacher = teacher_forward(self.model, tokens, self.chain_head.head_config.feature_layers)
        hiddens, labels, keeps = [], [], []
        with torch.no_grad():
            for step, hidden, logits in ttt_forward(
                self.chain_head, self.model, tokens, teacher.features, self.steps
            ):
                target_logits, valid = step_targets(teacher.logits, step)
                q = torch.softmax(self.chain_head.full_vocab_logits(logits.float()), dim=-1)
                p = torch.softmax(target_logits.float(), dim=-1)
                flat_q = q.reshape(-1, q.shape[-1])
                candidates = torch.multinomial(flat_q, 1, generator=self.generator).view(q.shape[:-1])
                mixed = torch.rand(candidates.shape, generator=self.generator, device=candidates.device)
                keep = valid & (mixed >= self.mixing_ratio)
                hiddens.append(hidden)
                labels.append(soft_acceptance_labels(p, q, candidates))
                keeps.append(keep)
        hidden, label, keep = torch.cat(hiddens, 1), torch.cat(labels, 1), torch.cat(keeps, 1)
        logits = self.acceptance_head(hidden.float())
        loss = weighted_soft_bce(logits, label, self.weight_mismatch, keep)
        predicted = torch.softmax(logits.float(), dim=-1)[..., 1][keep]
        error = float((predicted.detach() - label[keep]).abs().mean())
        return loss, {"bce": float(loss.detach()), "mean_label": float(label[keep].mean()), "mae": error}
