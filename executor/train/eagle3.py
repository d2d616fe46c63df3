"""EAGLE-3-style chain head trained with training-time test (TTT) over K steps.

Rows are indexed r = 0…S−2. Step 0 row r sits at position r, pairs the fused target feature f_r with embed(x_{r+1})
and predicts x_{r+2}. Step k ≥ 1 row r sits at position r + k, pairs the head's own step-(k−1) output of row r with
embed(x_{r+k+1}) and predicts x_{r+k+2} — what draft step k of a chain anchored at position r does at inference.
Its attention sees what the inference cache holds then: step-0 rows r' ≤ r (committed, from target features) and
its own chain's earlier draft rows (row r of steps 1…k). The teacher for step k row r is the target's distribution
at position r + k + 1, given the real prefix (all earlier drafts accepted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from executor.heads.eagle3 import Eagle3Head
from executor.heads.layers import apply_rotary
from executor.train.features import (
    distillation_kl,
    restrict_to_draft_vocab,
    teacher_forward,
    top1_agreement,
)


def ttt_mask(rows: int, step: int, device=None) -> torch.Tensor:
    """Boolean ``[rows, (step+1)·rows]``: keys are step-0 rows (causal) then rows of steps 1…step (same row)."""
    r = torch.arange(rows, device=device)
    causal = r[None, :] <= r[:, None]
    diagonal = r[None, :] == r[:, None]
    return torch.cat([causal] + [diagonal] * step, dim=1)


def layer_step(head: Eagle3Head, hidden, token_embeds, positions, past: list, mask):
    """``Eagle3Head.step`` with explicit past K/V lists (autograd-safe; no in-place cache writes).

    Returns (output hidden, draft logits, this step's (k, v)); the arithmetic is that of DecoderLayer/_Attention.
    """
    layer = head.layer
    attn = layer.self_attn
    cos, sin = head.rotary_emb(hidden, positions)
    attn_input = torch.cat(
        [layer.input_layernorm(token_embeds.to(hidden.dtype)), head.hidden_norm(hidden)], dim=-1
    )
    batch, steps, _ = attn_input.shape
    q = attn.q_norm(attn.q_proj(attn_input).view(batch, steps, attn.num_heads, attn.head_dim)).transpose(1, 2)
    k = attn.k_norm(attn.k_proj(attn_input).view(batch, steps, attn.num_kv_heads, attn.head_dim)).transpose(
        1, 2
    )
    v = attn.v_proj(attn_input).view(batch, steps, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    keys = torch.cat([*[p[0] for p in past], k], dim=2)
    values = torch.cat([*[p[1] for p in past], v], dim=2)
    groups = attn.num_heads // attn.num_kv_heads
    if groups > 1:
        keys = keys.repeat_interleave(groups, dim=1)
        values = values.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(batch, steps, -1))
    hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return hidden, head.lm_head(head.norm(hidden)), (k, v)


def ttt_forward(head: Eagle3Head, model, tokens: torch.Tensor, features: dict, steps: int):
    """Yield (step, output hidden [B, S−1, H], draft logits [B, S−1, V_d]) for steps 0…steps−1."""
    rows = tokens.shape[1] - 1
    index = torch.arange(rows, device=tokens.device)
    hidden = head.fuse({i: f[:, :rows] for i, f in features.items()})
    past: list = []
    for step in range(steps):
        token_pos = (index + step + 1).clamp(max=tokens.shape[1] - 1)
        embeds = model.embed(tokens[:, token_pos])
        positions = (index + step).unsqueeze(0).expand(tokens.shape[0], -1)
        mask = ttt_mask(rows, step, tokens.device)
        hidden, logits, kv = layer_step(head, hidden, embeds, positions, past, mask)
        past.append(kv)
        yield step, hidden, logits


def step_targets(teacher_logits: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher logits [B, S−1, V] of step ``step``'s rows, valid-row mask [B, S−1])."""
    batch, length, _ = teacher_logits.shape
    rows = length - 1
    index = torch.arange(rows, device=teacher_logits.device)
    target_pos = (index + step + 1).clamp(max=length - 1)
    valid = (index + step + 1 <= length - 1).unsqueeze(0).expand(batch, -1)
    return teacher_logits[:, target_pos], valid


@dataclass
class Eagle3Objective:
    model: object
    head: Eagle3Head
    steps: int = 7

    def __call__(self, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        teacher = teacher_forward(self.model, tokens, self.head.head_config.feature_layers)
        ids = None if self.head.head_config.draft_token_ids is None else self.head.draft_token_ids
        total, metrics = 0.0, {}
        for step, _, logits in ttt_forward(self.head, self.model, tokens, teacher.features, self.steps):
            target, valid = step_targets(restrict_to_draft_vocab(teacher.logits, ids), step)
            loss = distillation_kl(logits, target, valid)
            total = total + loss
            metrics[f"top1_{step + 1}"] = top1_agreement(logits, target, valid)
        total = total / self.steps
        metrics["kl"] = float(total.detach())
        return total, metrics
