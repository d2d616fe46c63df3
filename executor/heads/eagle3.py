"""EAGLE-3-style chain head (docs/baselines.md §4.1, §5.1): `fc` fuses low/mid/high target features
(3H -> H); one decoder layer whose attention input is cat(norm(embed(token)), norm(hidden)) (2H); its own final
norm and lm_head over a draft vocabulary. Run autoregressively: the first pass reads fused target features, later
passes feed back the layer's own output hidden state.

Row convention (as in EAGLE): the row at position i pairs the feature of position i with the embedding of token
i+1 and predicts token i+2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from executor.heads.layers import (
    DecoderLayer,
    HeadKVCache,
    LayerShape,
    RMSNorm,
    base_rotary,
    full_vocab_ids,
    init_linear_weights,
)
from spdsim.contract import SpdsimError


@dataclass(frozen=True)
class Eagle3HeadConfig:
    feature_layers: tuple[int, int, int]
    draft_token_ids: tuple[int, ...] | None = None

    @staticmethod
    def build(base_config, feature_layers=None, draft_token_ids=None) -> Eagle3HeadConfig:
        """Default low/mid/high = HF hidden-state indices (2, L//2, L−3), clamped into [1, L]."""
        num_layers = base_config.num_hidden_layers
        if feature_layers is None:
            feature_layers = tuple(min(max(i, 1), num_layers) for i in (2, num_layers // 2, num_layers - 3))
        layers = tuple(int(i) for i in feature_layers)
        if len(layers) != 3 or any(not 0 <= i <= num_layers for i in layers):
            raise SpdsimError(f"eagle3 feature_layers must be 3 hidden-state indices in [0, {num_layers}]")
        ids = None
        if draft_token_ids is not None:
            ids = tuple(int(i) for i in draft_token_ids)
            if any(a >= b for a, b in zip(ids, ids[1:], strict=False)) or ids[-1] >= base_config.vocab_size:
                raise SpdsimError("eagle3 draft_token_ids must be sorted unique ids inside the vocabulary")
        return Eagle3HeadConfig(feature_layers=layers, draft_token_ids=ids)


class Eagle3Head(nn.Module):
    def __init__(self, base_config, head: Eagle3HeadConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        shape = LayerShape.from_base_config(base_config)
        hidden = shape.hidden_size
        self.head_config = head
        self.base_model_type = base_config.model_type
        self.vocab_size = base_config.vocab_size
        self.fc = nn.Linear(3 * hidden, hidden, bias=False)
        self.hidden_norm = RMSNorm(hidden, shape.rms_norm_eps)
        self.layer = DecoderLayer(shape, attn_input_size=2 * hidden)
        self.norm = RMSNorm(hidden, shape.rms_norm_eps)
        ids = range(self.vocab_size) if head.draft_token_ids is None else head.draft_token_ids
        self.lm_head = nn.Linear(hidden, len(ids), bias=False)
        self.rotary_emb = base_rotary(base_config)
        self.register_buffer("draft_token_ids", torch.tensor(list(ids), dtype=torch.long), persistent=False)
        init_linear_weights(self)
        self.to(dtype)

    def fuse(self, features: dict[int, torch.Tensor]) -> torch.Tensor:
        """fc(cat(low, mid, high)) from target hidden states keyed by HF index."""
        parts = [features[i] for i in self.head_config.feature_layers]
        return self.fc(torch.cat(parts, dim=-1).to(self.fc.weight.dtype))

    def step(
        self,
        hidden: torch.Tensor,
        token_embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: HeadKVCache | None,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden, token_embeds: [B, T, H] -> (output hidden [B, T, H], draft logits [B, T, V_d])."""
        if positions.dim() == 1:
            positions = positions.unsqueeze(0).expand(hidden.shape[0], -1)
        cos_sin = self.rotary_emb(hidden, positions)
        token_embeds = token_embeds.to(hidden.dtype)
        attn_input = torch.cat([self.layer.input_layernorm(token_embeds), self.hidden_norm(hidden)], dim=-1)
        out = self.layer(hidden, cos_sin, 0, cache, attn_mask, attn_input=attn_input)
        return out, self.lm_head(self.norm(out))

    def new_cache(self, device=None, dtype=None, capacity: int = 256) -> HeadKVCache:
        attn = self.layer.self_attn
        weight = self.lm_head.weight
        return HeadKVCache(
            1, attn.num_kv_heads, attn.head_dim, device or weight.device, dtype or weight.dtype, capacity
        )

    def to_full_ids(self, draft_index: torch.Tensor) -> torch.Tensor:
        return full_vocab_ids(self.draft_token_ids, draft_index)

    def full_vocab_logits(self, draft_logits: torch.Tensor) -> torch.Tensor:
        full = draft_logits.new_full((*draft_logits.shape[:-1], self.vocab_size), float("-inf"))
        return full.index_copy(-1, self.draft_token_ids, draft_logits)


def save_eagle3(head: Eagle3Head, path: str | Path) -> None:
    """Our own format: {"state_dict", "config"} with the feature layers, draft ids and base family."""
    config = {
        "format": "spdsim-eagle3",
        "model_type": head.base_model_type,
        "hidden_size": head.fc.weight.shape[0],
        "feature_layers": list(head.head_config.feature_layers),
        "draft_token_ids": None
        if head.head_config.draft_token_ids is None
        else list(head.head_config.draft_token_ids),
    }
    state = {key: tensor.detach().cpu().clone() for key, tensor in head.state_dict().items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": state, "config": config}, tmp)
    tmp.replace(path)


def load_eagle3(source: str | Path | dict, base_config, dtype: torch.dtype | None = None) -> Eagle3Head:
    if isinstance(source, dict):
        payload = source
    else:
        if not Path(source).is_file():
            raise SpdsimError(f"eagle3 checkpoint {str(source)!r} does not exist")
        payload = torch.load(source, map_location="cpu", weights_only=True)
    config = payload.get("config", {}) if isinstance(payload, dict) else {}
    if config.get("format") != "spdsim-eagle3":
        raise SpdsimError(
            "eagle3 checkpoint must be a dict written by save_eagle3 (config.format 'spdsim-eagle3')"
        )
    if config.get("model_type") != base_config.model_type:
        raise SpdsimError(
            f"eagle3 checkpoint was trained on a {config.get('model_type')!r} base, not {base_config.model_type!r}"
        )
    if config.get("hidden_size") != base_config.hidden_size:
        raise SpdsimError(
            f"eagle3 checkpoint hidden_size {config.get('hidden_size')} does not match the base's "
            f"{base_config.hidden_size}"
        )
    state = payload["state_dict"]
    head_config = Eagle3HeadConfig.build(base_config, config["feature_layers"], config["draft_token_ids"])
    first = next(iter(state.values()))
    head = Eagle3Head(base_config, head_config, dtype=dtype or first.dtype)
    missing = sorted(set(head.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(head.state_dict()))
    if missing or unexpected:
        raise SpdsimError(
            f"eagle3 checkpoint keys differ: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    head.load_state_dict(state, strict=True)
    return head


def draft_vocabulary(vocab_size: int, draft_vocab_size: int) -> tuple[int, ...] | None:
    """Draft token ids of a random (untrained) head: the first ``draft_vocab_size`` ids, as many rows as a
    trained head's d2t table (which ids does not matter for timing); None (the whole vocabulary) for 0 or more."""
    if draft_vocab_size <= 0 or draft_vocab_size >= vocab_size:
        return None
    return tuple(range(draft_vocab_size))


@dataclass(frozen=True)
class FastEagle3:
    """An Eagle3Head in the fast decoder's functional form (``executor.heads.fast_layer``): its layer packed into
    ``LayerWeights``, run through the base model's (compiled) layer function over a 1-layer ``KVCache`` with
    position masking and the base model's RoPE tables. Static shapes, no host sync: graph-capturable."""

    model: object  # the base FastModel (embedding, RoPE tables, layer functions)
    fc: torch.Tensor  # [H, 3H]
    hidden_norm: torch.Tensor  # [H]
    weights: object  # layer_fns.LayerWeights (qkv over the 2H attention input)
    shape: object  # layer_fns.LayerShape
    norm: torch.Tensor  # [H]
    lm_head: torch.Tensor  # [V_d, H]
    draft_token_ids: torch.Tensor | None  # [V_d] or None (full vocabulary)
    feature_layers: tuple[int, int, int]

    @classmethod
    def from_head(cls, head: Eagle3Head, model) -> FastEagle3:
        from executor.heads.fast_layer import layer_shape, pack_decoder_layer

        device, dtype = model.device, head.fc.weight.dtype

        def take(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.detach().to(device=device).contiguous()

        ids = None if head.head_config.draft_token_ids is None else take(head.draft_token_ids)
        return cls(
            model,
            take(head.fc.weight),
            take(head.hidden_norm.weight),
            pack_decoder_layer(head.layer, device=device, dtype=dtype),
            layer_shape(head.layer),
            take(head.norm.weight),
            take(head.lm_head.weight),
            ids,
            head.head_config.feature_layers,
        )

    def new_cache(self, capacity: int):
        from executor.heads.fast_layer import new_head_cache

        return new_head_cache(self.shape, capacity, self.model.max_seq_len, self.model.device, self.fc.dtype)

    def fuse(self, features: dict[int, torch.Tensor]) -> torch.Tensor:
        parts = [features[i] for i in self.feature_layers]
        return F.linear(torch.cat(parts, dim=-1).to(self.fc.dtype), self.fc)

    def forward(
        self, hidden: torch.Tensor, token_embeds: torch.Tensor, positions: torch.Tensor, cache, window: int
    ) -> torch.Tensor:
        """The head layer on rows at ``positions`` (device tensor) over the first ``window`` cache slots."""
        from executor.heads.fast_layer import run_head_layer
        from executor.layer_fns import rms_norm

        eps = self.shape.eps
        embeds = token_embeds.to(hidden.dtype)
        attn_input = torch.cat(
            [rms_norm(embeds, self.weights.input_norm, eps), rms_norm(hidden, self.hidden_norm, eps)], dim=-1
        )
        return run_head_layer(
            self.model, self.weights, self.shape, hidden, positions, cache, window, attn_input=attn_input
        )

    def step(
        self, hidden: torch.Tensor, token_embeds: torch.Tensor, positions: torch.Tensor, cache, window: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eagle3Head.step's computation: (output hidden [B, T, H], draft logits [B, T, V_d] float32)."""
        out = self.forward(hidden, token_embeds, positions, cache, window)
        return out, self.logits(out)

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        from executor.layer_fns import head_logits

        return head_logits(out, self.norm, self.lm_head, self.shape.eps)

    def full_ids(self, draft_index: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary argmax indices -> full-vocabulary token ids."""
        return (
            draft_index if self.draft_token_ids is None else full_vocab_ids(self.draft_token_ids, draft_index)
        )
