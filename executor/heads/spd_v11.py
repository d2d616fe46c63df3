"""SPD v11 speculation module (PDM): aggregation projections over anchor features, L_s full decoder layers of the
base architecture, the frozen base final norm and a draft lm_head (docs/spd.md §2).

Parameter names and shapes are those of the published checkpoints (`aggr_projs.{a}`, `spec_layers.{j}.*`,
`lm_head`); the base final norm, the rotary tables and the draft-vocabulary map are non-persistent, as in the
reference, so `state_dict()` is exactly the checkpoint's `state_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from executor.heads.layers import (
    DecoderLayer,
    HeadKVCache,
    LayerShape,
    base_rotary,
    full_vocab_ids,
    init_linear_weights,
    rms_norm,
)
from spdsim.contract import SpdsimError


@dataclass(frozen=True)
class SpdHeadConfig:
    """What a v11 checkpoint's config fixes about the module (the base config fixes the rest)."""

    num_stages: int
    num_spec_layers: int
    aggr_feature_bound: tuple[int, ...]
    stage_layers: tuple[int, ...]
    draft_token_ids: tuple[int, ...] | None = None
    trained_with_use_deepest: bool = True
    spec_intermediate_size_fallback: int = 9216
    # Base layer indices the spec layers were initialised from (the reference writes the key only as a non-empty
    # list; empty = random init, key omitted).
    spec_init_from_base_layers: tuple[int, ...] = ()
    base_model_path: str = ""

    @staticmethod
    def build(
        base_config,
        num_stages: int,
        num_spec_layers: int,
        aggr_feature_bound: str | tuple[int, ...] | list[int] = "auto",
        stage_layers: tuple[int, ...] | list[int] | None = None,
        draft_token_ids: tuple[int, ...] | list[int] | None = None,
        **extra,
    ) -> SpdHeadConfig:
        """Resolve "auto" bounds and the stage split against the base model, validating every field."""
        num_layers = base_config.num_hidden_layers
        if num_stages < 1:
            raise SpdsimError(f"num_stages must be >= 1, got {num_stages}")
        if num_spec_layers < 1:
            raise SpdsimError(f"num_spec_layers must be >= 1, got {num_spec_layers}")
        split = resolve_stage_layers(num_layers, num_stages, stage_layers)
        bound = parse_aggr_feature_bound(aggr_feature_bound, num_layers, num_stages)
        ids = (
            None
            if draft_token_ids is None
            else check_draft_token_ids(draft_token_ids, base_config.vocab_size)
        )
        if "spec_init_from_base_layers" in extra:
            extra["spec_init_from_base_layers"] = parse_spec_init(extra["spec_init_from_base_layers"])
        head = SpdHeadConfig(
            num_stages=num_stages,
            num_spec_layers=num_spec_layers,
            aggr_feature_bound=bound,
            stage_layers=split,
            draft_token_ids=ids,
            **extra,
        )
        aggregation_tables(
            head
        )  # refuses a split whose reference depth mapping reads anchors not yet computed
        return head


def parse_spec_init(value) -> tuple[int, ...]:
    """The reference's `[int(x) for x in raw]` over a list of base layer indices; our older checkpoints stored a
    boolean (False = none), read as no layers."""
    if value is None or isinstance(value, bool):
        return ()
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise SpdsimError(
            f"spec_init_from_base_layers must be a list of layer indices, got {value!r}"
        ) from None


def resolve_stage_layers(num_layers: int, num_stages: int, stage_layers=None) -> tuple[int, ...]:
    """Per-stage layer counts: an even split, or an explicit list that must sum to L."""
    if stage_layers is not None:
        counts = tuple(int(c) for c in stage_layers)
        if len(counts) != num_stages or any(c < 1 for c in counts) or sum(counts) != num_layers:
            raise SpdsimError(
                f"stage_layers {list(counts)} must be {num_stages} positive counts summing to {num_layers}"
            )
        return counts
    if num_stages > num_layers or num_layers % num_stages:
        raise SpdsimError(
            f"num_stages {num_stages} does not divide {num_layers} layers; give an explicit stage_layers list"
        )
    return (num_layers // num_stages,) * num_stages


def default_aggr_feature_bound(num_layers: int, num_stages: int) -> tuple[int, ...]:
    """The reference "auto" bound: sorted unique clamp([0, lps, 3·lps, 6·lps, L−1])."""
    lps = num_layers // num_stages
    raw = [0, lps, 3 * lps, 6 * lps, num_layers - 1]
    return tuple(sorted({min(max(b, 0), num_layers) for b in raw}))


def parse_aggr_feature_bound(value, num_layers: int, num_stages: int) -> tuple[int, ...]:
    if isinstance(value, str):
        if value.strip() == "auto":
            return default_aggr_feature_bound(num_layers, num_stages)
        try:
            value = [int(v) for v in value.split(",")]
        except ValueError:
            raise SpdsimError(
                f"aggr_feature_bound {value!r} must be 'auto' or comma-separated ints"
            ) from None
    bound = tuple(int(b) for b in value)
    increasing = all(a < b for a, b in zip(bound, bound[1:], strict=False))
    if not bound or bound[0] != 0 or not increasing or bound[-1] > num_layers:
        raise SpdsimError(
            f"aggr_feature_bound {list(bound)} must start at 0, increase strictly and stay <= {num_layers}"
        )
    return bound


def reachable_aggr_feature_bound(num_layers: int, stage_layers: tuple[int, ...]) -> tuple[int, ...]:
    """The "auto" bound with each anchor the reference's depth mapping reads too early lowered to the layers a
    token has passed there: the same number of feature types (so the same drafter cost) for an uneven split
    that "auto" refuses, e.g. 36 layers in 8 stages. For timing untrained drafters, not for loading checkpoints."""
    bound = list(default_aggr_feature_bound(num_layers, len(stage_layers)))
    for _ in range(len(bound) * len(stage_layers)):  # each pass lowers one anchor; stop when none is too deep
        too_deep = [
            (aggr, sum(stage_layers[:d]))
            for d, aggr in enumerate(reference_aggr_of_depth(bound, stage_layers))
            if bound[aggr] > sum(stage_layers[:d])
        ]
        if not too_deep:
            break
        aggr, passed = too_deep[0]
        bound[aggr] = passed
    if any(a >= b for a, b in zip(bound, bound[1:], strict=False)):
        raise SpdsimError(
            f"no aggregation bound with {len(bound)} types fits stage_layers {list(stage_layers)}"
        )
    return tuple(bound)


def check_draft_token_ids(ids, vocab_size: int) -> tuple[int, ...]:
    ids = tuple(int(i) for i in ids)
    if (
        not ids
        or any(a >= b for a, b in zip(ids, ids[1:], strict=False))
        or ids[0] < 0
        or ids[-1] >= vocab_size
    ):
        raise SpdsimError(
            f"draft_token_ids must be sorted unique ids in [0, {vocab_size}); got {len(ids)} ids"
        )
    return ids


def reference_aggr_of_depth(bound, stage_layers) -> tuple[int, ...]:
    """The reference's aggregation type of each depth d = 0..n (`_depth_to_aggr_idx`):
    A(d) = max{i : b_i <= min(L, d · max(stage_layers))}."""
    total, widest = sum(stage_layers), max(stage_layers)
    return tuple(
        max(i for i, b in enumerate(bound) if b <= min(total, d * widest))
        for d in range(len(stage_layers) + 1)
    )


def aggregation_tables(head: SpdHeadConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(A(d) for d = 0..n, aggr_to_min_depth) as the reference computes them (`_depth_to_aggr_idx`):
    A(d) = max{i : b_i <= min(L, d · max(stage_layers))} — d · L/n for an even split.

    An uneven split passes only sum(stage_layers[:d]) layers by depth d; when the reference's A(d) needs an anchor
    deeper than that, no schedule can build the row, and the split is refused in one line."""
    n = head.num_stages
    bound = head.aggr_feature_bound
    aggr_of_depth = reference_aggr_of_depth(bound, head.stage_layers)
    for d in range(n + 1):
        passed = sum(head.stage_layers[:d])
        if bound[aggr_of_depth[d]] > passed:
            raise SpdsimError(
                f"stage_layers {list(head.stage_layers)} with aggr_feature_bound {list(bound)}: the reference maps "
                f"depth {d} to aggregation type {aggr_of_depth[d]} (d·max(stage_layers) = {d * max(head.stage_layers)} layers), whose "
                f"anchor h_{bound[aggr_of_depth[d]]} a token at depth {d} has not reached ({passed} layers); "
                "put the larger stages first or choose a bound without anchors in that gap"
            )
    min_depth = tuple(
        next((d for d in range(n + 1) if aggr_of_depth[d] == a), n + 1)
        for a in range(len(head.aggr_feature_bound))
    )
    return aggr_of_depth, min_depth


class SpeculationModuleV11(nn.Module):
    """The v11 PDM; only the newest row's output is decoded into a draft token."""

    def __init__(self, base_config, head: SpdHeadConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        shape = LayerShape.from_base_config(base_config)
        hidden = shape.hidden_size
        self.head_config = head
        self.base_num_layers = base_config.num_hidden_layers
        self.vocab_size = base_config.vocab_size
        self.final_norm_eps = base_config.rms_norm_eps
        self.final_norm_centred = shape.centred_norm
        self.aggr_of_depth, self.aggr_to_min_depth = aggregation_tables(head)
        bound = head.aggr_feature_bound
        self.aggr_projs = nn.ModuleList(
            nn.Linear((a + 1) * hidden, hidden, bias=False) for a in range(len(bound))
        )
        self.spec_layers = nn.ModuleList(DecoderLayer(shape) for _ in range(head.num_spec_layers))
        draft_size = self.vocab_size if head.draft_token_ids is None else len(head.draft_token_ids)
        self.lm_head = nn.Linear(hidden, draft_size, bias=False)
        self.rotary_emb = base_rotary(base_config)
        ids = range(self.vocab_size) if head.draft_token_ids is None else head.draft_token_ids
        self.register_buffer("draft_token_ids", torch.tensor(list(ids), dtype=torch.long), persistent=False)
        self.register_buffer(
            "final_norm_weight",
            torch.zeros(hidden) if shape.centred_norm else torch.ones(hidden),
            persistent=False,
        )
        init_linear_weights(self)
        self.to(dtype)

    @property
    def num_aggr_types(self) -> int:
        return len(self.head_config.aggr_feature_bound)

    @property
    def anchor_indices(self) -> tuple[int, ...]:
        """HF hidden-state indices (0 = embedding, k = output of layer k−1) the module reads."""
        return self.head_config.aggr_feature_bound

    def attach_base(
        self, final_norm_weight: torch.Tensor, base_lm_head_weight: torch.Tensor | None = None
    ) -> None:
        """Bind the frozen base final norm; optionally initialise lm_head from the base rows of the draft ids."""
        self.final_norm_weight.copy_(final_norm_weight.detach())
        if base_lm_head_weight is not None:
            with torch.no_grad():
                self.lm_head.weight.copy_(base_lm_head_weight.detach()[self.draft_token_ids.cpu()])

    def project(self, aggr_type: int, features: dict[int, torch.Tensor]) -> torch.Tensor:
        """aggr_projs[a](concat(h_{b_0}, …, h_{b_a})); features maps HF index -> [..., H]."""
        anchors = [features[b] for b in self.head_config.aggr_feature_bound[: aggr_type + 1]]
        dtype = self.aggr_projs[aggr_type].weight.dtype
        return self.aggr_projs[aggr_type](torch.cat(anchors, dim=-1).to(dtype))

    def run_layers(
        self,
        rows: torch.Tensor,
        positions: torch.Tensor,
        cache: HeadKVCache | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """rows [B, T, H] at absolute positions [B, T] (or [T]) through the spec layers, pre-final-norm."""
        if positions.dim() == 1:
            positions = positions.unsqueeze(0).expand(rows.shape[0], -1)
        cos_sin = self.rotary_emb(rows, positions)
        hidden = rows
        for index, layer in enumerate(self.spec_layers):
            hidden = layer(hidden, cos_sin, index, cache, attn_mask)
        return hidden

    def draft_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Base final norm (frozen) then the draft lm_head: logits over the draft vocabulary."""
        weight = self.final_norm_weight.to(hidden.dtype)
        return self.lm_head(rms_norm(hidden, weight, self.final_norm_eps, self.final_norm_centred))

    def decode(
        self, rows: torch.Tensor, positions: torch.Tensor, cache: HeadKVCache, keep: int
    ) -> torch.Tensor:
        """Draft logits of the last row; afterwards the cache commits only the first `keep` rows."""
        start = cache.length
        hidden = self.run_layers(rows, positions, cache)
        cache.length = start + keep
        return self.draft_logits(hidden[:, -1])

    def new_cache(self, device=None, dtype=None, capacity: int = 256) -> HeadKVCache:
        attn = self.spec_layers[0].self_attn
        weight = self.lm_head.weight
        return HeadKVCache(
            len(self.spec_layers),
            attn.num_kv_heads,
            attn.head_dim,
            device or weight.device,
            dtype or weight.dtype,
            capacity,
        )

    def to_full_ids(self, draft_index: torch.Tensor) -> torch.Tensor:
        return full_vocab_ids(self.draft_token_ids, draft_index)

    def full_vocab_logits(self, draft_logits: torch.Tensor) -> torch.Tensor:
        """Scatter draft logits into the full vocabulary; tokens outside the draft vocabulary get −inf."""
        full = draft_logits.new_full((*draft_logits.shape[:-1], self.vocab_size), float("-inf"))
        return full.index_copy(-1, self.draft_token_ids, draft_logits)
