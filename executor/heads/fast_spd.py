"""The v11 drafter as fixed-shape functions over a position-masked static KV cache (graph-capturable).

`SpeculationModuleV11` is the HF-style reference (per-row projections, a host-side cache length, a cache that
grows by re-allocation). This is the same computation for the decode loop:

* aggregation: each row's anchor features sit in a static ``[R, A, H]`` tensor (zeros where the row has no such
  anchor yet); every projection ``aggr_projs[a]`` is applied to all rows at once and ``torch.where`` keeps, per
  row, the output of the row's aggregation type (each weight is read once, as when the rows are projected one by
  one, and the shapes depend on the row count alone);
* the L_s spec layers run through ``executor.layer_fns.decoder_layer`` (fused weights, the target's compiled layer
  function when it is compiled) over an ``executor.cache.KVCache`` with position masking: a row is written at its
  position and attends to slots <= its position, so rows of in-flight tokens written past the committed prefix are
  overwritten when those positions are drafted again — v11's "commit only the first `keep` rows" is implicit;
* final norm + draft lm_head + argmax, mapped to full-vocabulary ids; with synthetic acceptance the planned draft
  of the new position replaces the token from a static per-position plan buffer (no host round trip).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from executor.cache import KVCache, cache_slots, kv_bucket
from executor.heads.fast_layer import layer_shape, pack_decoder_layer
from executor.heads.layers import full_vocab_ids
from executor.layer_fns import head_logits


class FastSpdDrafter:
    """A v11 module's weights in fused layout, its spec KV cache and the static buffers of the decode loop.

    ``model`` is the target (FastModel API): its RoPE tables (the module uses the base rotary) and its
    ``layer_functions`` (compiled when the target is). One instance serves every prompt of a run (``reset`` between
    prompts), so graphs captured against its cache and buffers stay valid.
    """

    def __init__(self, module, model, capacity: int):
        self.module = module
        self.model = model
        self.anchor_indices = tuple(module.anchor_indices)
        self.num_types = module.num_aggr_types
        self.deepest = self.num_types - 1
        self.aggr_of_depth = tuple(module.aggr_of_depth)
        self.projections = [proj.weight.detach() for proj in module.aggr_projs]
        self.layers = [pack_decoder_layer(layer) for layer in module.spec_layers]
        self.shape = layer_shape(module.spec_layers[0])
        # Qwen3.5 base: gated-attention spec layers (the packed q rows hold query and gate per head) with
        # zero-centred norms and partial RoPE run through the hybrid target's full-attention layer function.
        self.centred = module.final_norm_centred
        if module.spec_layers[0].self_attn.gated:
            from executor.deltanet import AttnShape

            s = self.shape
            self.shape = AttnShape(s.num_heads, s.num_kv_heads, s.head_dim, model.cfg.rotary_dim, s.eps)
        self.norm = module.final_norm_weight.detach()
        self.norm_eps = module.final_norm_eps
        self.lm_head = module.lm_head.weight.detach()
        self.draft_token_ids = module.draft_token_ids
        self.vocab_size = module.vocab_size
        weight = self.lm_head
        self.device, self.dtype = weight.device, weight.dtype
        self.hidden_size = weight.shape[1]
        capacity = cache_slots(capacity, max(model.max_seq_len, capacity))
        shape = self.shape
        self.cache = KVCache(
            len(self.layers),
            shape.num_kv_heads,
            shape.head_dim,
            capacity,
            device=self.device,
            dtype=self.dtype,
        )
        self.capacity = capacity
        # Static per-position synthetic plan (0 = no plan, as SyntheticDrafts.replace) and device token ids.
        self.plan = torch.zeros(capacity, dtype=torch.long, device=self.device)
        self.token_ids = torch.arange(self.vocab_size, device=self.device)
        self.positions = torch.arange(capacity, device=self.device)
        self.zero_feature = torch.zeros(1, 1, self.hidden_size, device=self.device, dtype=self.dtype)
        # Every row layout of the schedule, made once (a host-to-device copy each, never inside a cycle).
        num_stages = len(self.aggr_of_depth) - 1
        self._types: dict[tuple[bool, int], torch.Tensor] = {}
        for depths in range(1, num_stages + 1):
            for has_pending in (False, True):
                self.row_types(has_pending, depths)
        self._plan_source: list[int] | None = None

    # -- per prompt -----------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.cache.reset()
        self.plan.zero_()
        self._plan_source = None

    def load_plan(self, synthetic) -> None:
        """Copy the synthetic plan (positions from the prompt length on) into the static buffer when it changed
        (at the prompt's start and after a re-anchor; a host-to-device copy, off the decode clock)."""
        if synthetic is None or synthetic.planned is self._plan_source:
            return
        planned = synthetic.planned_on(self.device)
        start = synthetic.prompt_len
        count = max(0, min(len(planned), self.capacity - start))
        self.plan.zero_()
        self.plan[start : start + count].copy_(planned[:count])
        self._plan_source = synthetic.planned

    def token(self, token: int) -> torch.Tensor:
        """A host token id as a ``[1, 1]`` device tensor: a view of a device arange (no host-to-device copy)."""
        return self.token_ids[token : token + 1].view(1, 1)

    def row_types(self, has_pending: bool, depths: int) -> torch.Tensor:
        """Aggregation type of each draft row ([pending], depth depths−1, …, depth 0), cached on the device."""
        key = (has_pending, depths)
        if key not in self._types:
            types = [self.deepest] * has_pending + [self.aggr_of_depth[d] for d in reversed(range(depths))]
            self._types[key] = torch.tensor(types, dtype=torch.long, device=self.device)
        return self._types[key]

    def row_features(self, feats: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        """One row's anchors in aggregation order, [1, 1, H] each (zeros for anchors it has not reached yet)."""
        return [feats.get(b, self.zero_feature) for b in self.anchor_indices]

    # -- the computation ------------------------------------------------------------------------------------
    def project(self, feats: torch.Tensor, types: torch.Tensor | int) -> torch.Tensor:
        """``feats [R, A, H]`` -> ``[R, H]``: ``aggr_projs[types[r]](concat(anchors of row r))``."""
        rows = feats.shape[0]
        flat = feats.to(self.dtype).reshape(rows, self.num_types * self.hidden_size)
        if isinstance(types, int):
            return F.linear(flat[:, : (types + 1) * self.hidden_size], self.projections[types])
        out = None
        for a, weight in enumerate(self.projections):
            projected = F.linear(flat[:, : (a + 1) * self.hidden_size], weight)
            out = projected if out is None else torch.where((types == a)[:, None], projected, out)
        return out

    def run_layers(self, rows: torch.Tensor, positions: torch.Tensor, window: int) -> torch.Tensor:
        """``rows [1, R, H]`` at ``positions [R]`` through the spec layers (pre-final-norm)."""
        model, cache = self.model, self.cache
        layer_fn, inputs_fn = model.layer_functions(rows.shape[1])
        cos, sin, mask = inputs_fn(model.rope_cos, model.rope_sin, positions, window, cache.lengths)
        hidden = rows
        for i, weights in enumerate(self.layers):
            hidden = layer_fn(
                hidden,
                weights,
                self.shape,
                cos,
                sin,
                positions,
                mask,
                cache.keys[i][:, :, :window],
                cache.values[i][:, :, :window],
            )
        return hidden

    def draft_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm (frozen base) + draft lm_head: float32 logits over the draft vocabulary."""
        if self.centred:
            from executor.deltanet import centred_head_logits

            return centred_head_logits(hidden, self.norm, self.lm_head, self.norm_eps)
        return head_logits(hidden, self.norm, self.lm_head, self.norm_eps)

    def full_vocab_logits(self, draft_logits: torch.Tensor) -> torch.Tensor:
        full = draft_logits.new_full((*draft_logits.shape[:-1], self.vocab_size), float("-inf"))
        return full.index_copy(-1, self.draft_token_ids, draft_logits)

    def window(self, last_position: int) -> int:
        return kv_bucket(last_position + 1, self.capacity)

    def prefill(self, feats: dict[int, torch.Tensor], length: int) -> None:
        """The prompt's rows (deepest aggregation) into the spec cache at positions [0, length)."""
        stacked = torch.stack([feats[b][0] for b in self.anchor_indices], dim=1)  # [T, A, H]
        rows = self.project(stacked, self.deepest)[None]
        positions = torch.arange(length, device=self.device)
        self.run_layers(rows, positions, self.window(length - 1))

    def step_fn(self, window: int, synthetic: bool, want_logits: bool):
        """The drafting step of one shape class, as a fixed-shape function for `GraphCache.run`:
        (feats [R, A, H], types [R], positions [R], new_position [1]) -> (token [1, 1], its embedding [1, 1, H],
        full-vocabulary logits [V] when ``want_logits``)."""
        model = self.model

        def step(feats, types, positions, new_position):
            rows = self.project(feats, types)[None]
            hidden = self.run_layers(rows, positions, window)
            logits = self.draft_logits(hidden[:, -1:])[0, 0]  # [V_draft]
            # index_select with 1-element index tensors: no 0-dim tensor index (which could read the host).
            if synthetic:
                token = self.plan.index_select(0, new_position.clamp(max=self.capacity - 1)).view(1, 1)
            else:
                token = full_vocab_ids(self.draft_token_ids, logits.argmax(dim=-1, keepdim=True)).view(1, 1)
            outputs = (token, model.embed(token))
            return (*outputs, self.full_vocab_logits(logits)) if want_logits else outputs

        return step
