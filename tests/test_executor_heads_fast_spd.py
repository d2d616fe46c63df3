"""The fast v11 drafter (fused weights, position-masked static cache, all rows projected at once) computes the
module's drafts: float32 logits allclose to `SpeculationModuleV11.decode` through fill, saturated, rejection and
refill row layouts; packing and the synthetic plan buffer."""

import pytest
import torch
from executor_tiny import tiny_model

from executor.heads.fast_spd import FastSpdDrafter, pack_decoder_layer
from executor.heads.layers import base_config_of
from executor.heads.spd_v11 import SpdHeadConfig, SpeculationModuleV11


def module_and_fast(model, stage_layers, spec_layers=2, draft_ids=None):
    base = base_config_of(model)
    head = SpdHeadConfig.build(
        base,
        num_stages=len(stage_layers),
        num_spec_layers=spec_layers,
        stage_layers=stage_layers,
        draft_token_ids=draft_ids,
        # an uneven split needs a bound the reference depth mapping can build ("auto" is refused for (2, 1, 1))
        aggr_feature_bound="auto" if len(set(stage_layers)) == 1 else "0,2,3",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        module = SpeculationModuleV11(base, head)
        with torch.no_grad():
            for param in module.parameters():  # norms away from 1, weights away from the init scale
                param.add_(0.1 * torch.randn_like(param))
    module.attach_base(model.norm.detach() * 1.5, model.lm_head_weight.detach())
    return module.eval(), FastSpdDrafter(module, model, capacity=64)


def layouts(prompt_len, n):
    """(has_pending, depths, first row's position) of the schedule's drafts: the fill (its last cycle is the
    first saturated one), two saturated cycles, a rejection in the second and the refill that follows."""
    p = prompt_len
    fill = [(False, d, p) for d in range(1, n + 1)]
    saturated = [(True, n, p), (True, n, p + 1)]
    reject = [(True, 1, p + 2)]  # pending = the token that exited, then the target's token alone
    refill = [(False, d, p + 3) for d in range(2, n + 1)]
    return fill + saturated + reject + refill


@pytest.mark.parametrize("stage_layers,draft_ids", [((2, 2), None), ((2, 1, 1), tuple(range(0, 128, 3)))])
def test_fast_drafter_matches_the_module_in_float32(stage_layers, draft_ids):
    model = tiny_model(layers=4)
    module, fast = module_and_fast(model, stage_layers, draft_ids=draft_ids)
    n, hidden, prompt_len = len(stage_layers), model.cfg.hidden_size, 7
    gen = torch.Generator().manual_seed(0)
    anchors = module.anchor_indices
    prompt_feats = {b: torch.randn(1, prompt_len, hidden, generator=gen) for b in anchors}
    cache = module.new_cache(capacity=64)
    with torch.inference_mode():
        module.decode(module.project(fast.deepest, prompt_feats), torch.arange(prompt_len), cache, prompt_len)
        fast.prefill(prompt_feats, prompt_len)
        for has_pending, depths, first in layouts(prompt_len, n):
            rows = int(has_pending) + depths
            types = fast.row_types(has_pending, depths).tolist()
            feats = [{b: torch.randn(1, 1, hidden, generator=gen) for b in anchors} for _ in range(rows)]
            positions = torch.arange(first, first + rows)
            projected = torch.cat([module.project(a, f) for a, f in zip(types, feats, strict=True)], dim=1)
            expected = module.full_vocab_logits(
                module.decode(projected, positions, cache, int(has_pending))[0]
            )
            stacked = torch.cat([t for f in feats for t in fast.row_features(f)], dim=1).view(
                rows, -1, hidden
            )
            step = fast.step_fn(fast.window(first + rows - 1), synthetic=False, want_logits=True)
            token, embed, logits = step(
                stacked, fast.row_types(has_pending, depths), positions, positions[-1:] + 1
            )
            torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
            assert int(token) == int(expected.argmax())
            torch.testing.assert_close(embed, model.embed(token))
            assert cache.length == first + int(has_pending)


def test_packing_fuses_qkv_and_gate_up():
    model = tiny_model(layers=4)
    module, _ = module_and_fast(model, (2, 2))
    layer = module.spec_layers[0]
    packed = pack_decoder_layer(layer)
    attn = layer.self_attn
    assert torch.equal(packed.qkv, torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
    assert torch.equal(packed.gate_up, torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]))
    assert packed.qkv_bias is None and packed.q_norm is not None


def test_synthetic_plan_buffer_replaces_the_draft_by_position():
    model = tiny_model(layers=4)
    _, fast = module_and_fast(model, (2, 2))

    class Plan:  # the SyntheticDrafts interface the drafter reads
        prompt_len = 5
        planned = [11, 12, 13]

        def planned_on(self, device):
            return torch.tensor(self.planned, device=device)

    plan = Plan()
    fast.load_plan(plan)
    feats = torch.zeros(1, fast.num_types, model.cfg.hidden_size)
    step = fast.step_fn(fast.window(6), synthetic=True, want_logits=False)
    with torch.inference_mode():
        fast.prefill({b: torch.zeros(1, 5, model.cfg.hidden_size) for b in fast.anchor_indices}, 5)
        for position, planned in ((6, 12), (7, 13), (8, 0), (4, 0)):
            token, _ = step(feats, fast.row_types(False, 1), torch.tensor([5]), torch.tensor([position]))
            assert int(token) == planned
    plan.planned = [21, 22, 23]  # a re-anchor replaces the list: the buffer follows
    fast.load_plan(plan)
    assert fast.plan[5:8].tolist() == [21, 22, 23]
