"""SPD v11 head: published checkpoint format (docs/spd.md §2.4, §2.6), A(d) tables, strict loading."""

import pytest
import torch
from transformers import GPT2Config, LlamaConfig, Qwen3Config

from executor.heads.checkpoint import load_spd_checkpoint, save_spd_checkpoint
from executor.heads.spd_v11 import (
    SpdHeadConfig,
    SpeculationModuleV11,
    aggregation_tables,
    default_aggr_feature_bound,
    reachable_aggr_feature_bound,
)
from spdsim.errors import SpdsimError

H, NH, KV, HD, FFN, V, L = 32, 4, 2, 8, 48, 64, 4


def qwen3_config(hidden=H):
    return Qwen3Config(
        vocab_size=V,
        hidden_size=hidden,
        intermediate_size=FFN,
        num_hidden_layers=L,
        num_attention_heads=NH,
        num_key_value_heads=KV,
        head_dim=HD,
        max_position_embeddings=512,
    )


def llama_config(hidden=H):
    return LlamaConfig(
        vocab_size=V,
        hidden_size=hidden,
        intermediate_size=FFN,
        num_hidden_layers=L,
        num_attention_heads=NH,
        num_key_value_heads=KV,
        max_position_embeddings=512,
    )


DRAFT_IDS = [1, 3, 4, 9, 17, 30, 31, 40, 63]


def hand_built_checkpoint(model_type="qwen3", version=11, num_stages=2, spec_layers=1, hidden=H):
    """A checkpoint dict written from the documented key/shape table, not by our writer."""
    bound = [0, 2, 3]
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    state = {f"aggr_projs.{a}.weight": rand(hidden, (a + 1) * hidden) for a in range(len(bound))}
    state["lm_head.weight"] = rand(len(DRAFT_IDS), hidden)
    for j in range(spec_layers):
        p = f"spec_layers.{j}."
        state[p + "input_layernorm.weight"] = rand(hidden)
        state[p + "post_attention_layernorm.weight"] = rand(hidden)
        state[p + "self_attn.q_proj.weight"] = rand(NH * HD, hidden)
        state[p + "self_attn.k_proj.weight"] = rand(KV * HD, hidden)
        state[p + "self_attn.v_proj.weight"] = rand(KV * HD, hidden)
        state[p + "self_attn.o_proj.weight"] = rand(hidden, NH * HD)
        state[p + "self_attn.q_norm.weight"] = rand(HD)
        state[p + "self_attn.k_norm.weight"] = rand(HD)
        state[p + "mlp.gate_proj.weight"] = rand(FFN, hidden)
        state[p + "mlp.up_proj.weight"] = rand(FFN, hidden)
        state[p + "mlp.down_proj.weight"] = rand(hidden, FFN)
    config = {
        "hidden_size": hidden,
        "vocab_size": V,
        "model_type": model_type,
        "base_model_path": "tiny",
        "draft_vocab_size": len(DRAFT_IDS),
        "num_stages": num_stages,
        "num_spec_layers": spec_layers,
        "version": version,
        "trained_with_use_deepest": True,
        "aggr_feature_bound": bound,
        "num_aggr_types": len(bound),
        "draft_token_ids": DRAFT_IDS,
        "spec_intermediate_size_fallback": 9216,
    }
    return {"state_dict": state, "config": config}


def test_hand_built_checkpoint_loads_with_strict_keys_and_draft_id_order():
    ckpt = hand_built_checkpoint()
    module = load_spd_checkpoint(ckpt, qwen3_config())
    assert set(module.state_dict()) == set(ckpt["state_dict"])
    for key, tensor in ckpt["state_dict"].items():
        assert torch.equal(module.state_dict()[key], tensor), key
    assert module.aggr_of_depth == (0, 1, 2)  # bound 0,2,3 with 2 layers per stage: d=1 -> 2, d=2 -> 4
    # lm_head row i is token draft_token_ids[i]: a hidden state aligned with row 5 drafts token 30.
    hidden = torch.zeros(1, H)
    with torch.no_grad():
        module.lm_head.weight.zero_()
        module.lm_head.weight[5] = 1.0
        logits = module.draft_logits(hidden + 1.0)
    assert module.to_full_ids(logits.argmax(-1)).item() == DRAFT_IDS[5] == 30
    full = module.full_vocab_logits(logits)
    assert full.shape[-1] == V and torch.isinf(full[0, 0]) and full[0, 30] == logits[0, 5]


@pytest.mark.parametrize("make_config", [qwen3_config, llama_config])
def test_round_trip_save_load_is_exact(tmp_path, make_config):
    base = make_config()
    head = SpdHeadConfig.build(
        base, num_stages=2, num_spec_layers=2, aggr_feature_bound="0,2,4", draft_token_ids=DRAFT_IDS
    )
    module = SpeculationModuleV11(base, head).to(torch.bfloat16)
    norm = torch.rand(H) + 0.5
    module.attach_base(norm)
    path = tmp_path / "head.pt"
    save_spd_checkpoint(module, base, path)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "config"}
    assert raw["config"]["version"] == 11 and raw["config"]["model_type"] == base.model_type
    assert raw["config"]["draft_token_ids"] == DRAFT_IDS and raw["config"]["aggr_feature_bound"] == [0, 2, 4]
    assert not any(k == "norm.weight" or "rotary" in k or "draft_token_ids" in k for k in raw["state_dict"])
    assert raw["state_dict"]["spec_layers.1.self_attn.q_norm.weight"].shape == (HD,)
    assert raw["state_dict"]["aggr_projs.2.weight"].shape == (H, 3 * H)
    loaded = load_spd_checkpoint(path, base, final_norm_weight=norm)
    assert loaded.lm_head.weight.dtype == torch.bfloat16
    for key, tensor in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    rows = torch.randn(1, 3, H, dtype=torch.bfloat16)
    positions = torch.tensor([5, 6, 7])
    out_a = module.decode(rows, positions, module.new_cache(), keep=1)
    out_b = loaded.decode(rows, positions, loaded.new_cache(), keep=1)
    assert torch.equal(out_a, out_b)


@pytest.mark.parametrize("version,word", [(10, "paper-v1"), (12, "uneven-split")])
def test_versions_10_and_12_are_refused_with_the_reason(version, word):
    with pytest.raises(SpdsimError, match=word):
        load_spd_checkpoint(hand_built_checkpoint(version=version), qwen3_config())


def test_wrong_hidden_size_is_refused():
    with pytest.raises(SpdsimError, match="hidden_size 48 does not match .* 32"):
        load_spd_checkpoint(hand_built_checkpoint(hidden=48), qwen3_config())


def test_missing_and_unexpected_keys_are_refused():
    ckpt = hand_built_checkpoint()
    del ckpt["state_dict"]["spec_layers.0.self_attn.k_norm.weight"]
    with pytest.raises(SpdsimError, match="missing 1 key.*k_norm"):
        load_spd_checkpoint(ckpt, qwen3_config())
    ckpt = hand_built_checkpoint()
    ckpt["state_dict"]["norm.weight"] = torch.ones(H)  # the base final norm must not be stored
    with pytest.raises(SpdsimError, match="unexpected .*norm.weight"):
        load_spd_checkpoint(ckpt, qwen3_config())
    ckpt = hand_built_checkpoint()
    ckpt["state_dict"]["aggr_projs.1.weight"] = torch.zeros(H, 3 * H)
    with pytest.raises(SpdsimError, match=r"aggr_projs.1.weight has shape \[32, 96\]"):
        load_spd_checkpoint(ckpt, qwen3_config())


def test_base_of_another_family_is_refused():
    with pytest.raises(SpdsimError, match="trained on a 'qwen3' base.*'llama'"):
        load_spd_checkpoint(hand_built_checkpoint(model_type="qwen3"), llama_config())
    gpt2 = GPT2Config(n_embd=H, n_layer=L, n_head=NH, vocab_size=V)
    with pytest.raises(SpdsimError, match="'gpt2' is not a supported base family"):
        load_spd_checkpoint(hand_built_checkpoint(model_type="gpt2"), gpt2)


def test_not_a_checkpoint_dict(tmp_path):
    with pytest.raises(SpdsimError, match="does not exist"):
        load_spd_checkpoint(tmp_path / "none.pt", qwen3_config())
    with pytest.raises(SpdsimError, match='"state_dict" and "config"'):
        load_spd_checkpoint({"weights": {}}, qwen3_config())


class _Shape:
    def __init__(self, layers):
        self.num_hidden_layers = layers
        self.vocab_size = 10


@pytest.mark.parametrize(
    "n,bound,aggr,min_depth",
    [  # rows of the reference table (docs/spd.md §2.1, L = 32)
        (4, "0,8,16,24,31", (0, 1, 2, 3, 4), (0, 1, 2, 3, 4)),
        (8, "0,8,16,24,31", (0, 0, 1, 1, 2, 2, 3, 3, 4), (0, 2, 4, 6, 8)),
        (4, "auto", (0, 1, 1, 2, 4), (0, 1, 3, 5, 4)),
        (8, "auto", (0, 1, 1, 2, 2, 2, 3, 3, 4), (0, 1, 3, 6, 8)),
        (16, "auto", (0, 1, 1, 2, 2, 2) + (3,) * 10 + (4,), (0, 1, 3, 6, 16)),
    ],
)
def test_depth_to_aggregation_tables_match_the_reference(n, bound, aggr, min_depth):
    head = SpdHeadConfig.build(_Shape(32), num_stages=n, num_spec_layers=1, aggr_feature_bound=bound)
    assert aggregation_tables(head) == (aggr, min_depth)


def test_auto_bound_and_bad_splits():
    assert default_aggr_feature_bound(32, 4) == (0, 8, 24, 31, 32)
    with pytest.raises(SpdsimError, match="does not divide"):
        SpdHeadConfig.build(_Shape(30), num_stages=4, num_spec_layers=1)
    head = SpdHeadConfig.build(_Shape(30), num_stages=4, num_spec_layers=1, stage_layers=[9, 7, 7, 7])
    assert head.stage_layers == (9, 7, 7, 7)
    with pytest.raises(SpdsimError, match="summing to 30"):
        SpdHeadConfig.build(_Shape(30), num_stages=4, num_spec_layers=1, stage_layers=[9, 7, 7, 6])
    with pytest.raises(SpdsimError, match="aggr_feature_bound"):
        SpdHeadConfig.build(_Shape(32), num_stages=4, num_spec_layers=1, aggr_feature_bound="0,8,8")


def test_reachable_bound_keeps_the_type_count_where_auto_reads_an_unreached_anchor():
    split = (5, 5, 5, 5, 4, 4, 4, 4)  # 36 layers in 8 stages: "auto" maps depth 7 to h_35, passed 32
    with pytest.raises(SpdsimError, match="has not reached"):
        SpdHeadConfig.build(_Shape(36), num_stages=8, num_spec_layers=1, stage_layers=split)
    bound = reachable_aggr_feature_bound(36, split)
    assert len(bound) == len(default_aggr_feature_bound(36, 8)) and bound[-1] == 32
    head = SpdHeadConfig.build(_Shape(36), 8, 1, bound, stage_layers=split)
    aggregation_tables(head)  # builds: every anchor is reached
    assert reachable_aggr_feature_bound(32, (4,) * 8) == default_aggr_feature_bound(32, 8)


def test_uneven_split_is_saved_as_stage_layers(tmp_path):
    base = qwen3_config()
    head = SpdHeadConfig.build(
        base, num_stages=3, num_spec_layers=1, stage_layers=[2, 1, 1], aggr_feature_bound="0,2,3"
    )
    module = SpeculationModuleV11(base, head)
    assert module.aggr_of_depth == (0, 1, 2, 2)
    save_spd_checkpoint(module, base, tmp_path / "h.pt")
    loaded = load_spd_checkpoint(tmp_path / "h.pt", base)
    assert loaded.head_config.stage_layers == (2, 1, 1)


def test_writer_follows_the_reference_key_conventions(tmp_path):
    base = qwen3_config()
    head = SpdHeadConfig.build(base, num_stages=2, num_spec_layers=1, aggr_feature_bound="0,2,3")
    save_spd_checkpoint(SpeculationModuleV11(base, head), base, tmp_path / "a.pt")
    config = torch.load(tmp_path / "a.pt", weights_only=True)["config"]
    # the reference loaders run [int(x) for x in raw] on the key: never a boolean; absent without init layers
    assert "spec_init_from_base_layers" not in config and "draft_token_ids" not in config
    head = SpdHeadConfig.build(
        base, num_stages=2, num_spec_layers=1, aggr_feature_bound="0,2,3", spec_init_from_base_layers=[1]
    )
    save_spd_checkpoint(SpeculationModuleV11(base, head), base, tmp_path / "b.pt")
    config = torch.load(tmp_path / "b.pt", weights_only=True)["config"]
    assert config["spec_init_from_base_layers"] == [1]
    assert [int(x) for x in config["spec_init_from_base_layers"]] == [1]  # what the reference loader does
    assert load_spd_checkpoint(tmp_path / "b.pt", base).head_config.spec_init_from_base_layers == (1,)
    legacy = hand_built_checkpoint()
    legacy["config"]["spec_init_from_base_layers"] = False  # what our writer used to store
    assert load_spd_checkpoint(legacy, qwen3_config()).head_config.spec_init_from_base_layers == ()


class _Shape8:
    num_hidden_layers = 8
    vocab_size = 10


def test_uneven_split_maps_depths_as_the_reference_or_is_refused_in_one_line():
    # stage layers [3, 2, 2, 1]: the reference maps depth d by d · max(stage_layers) = 0, 3, 6, 8, 8 layers.
    head = SpdHeadConfig.build(
        _Shape8(), num_stages=4, num_spec_layers=1, stage_layers=[3, 2, 2, 1], aggr_feature_bound="0,2,4,5,7"
    )
    assert aggregation_tables(head)[0] == (0, 1, 3, 4, 4)
    # with an anchor at h_6 the reference gives depth 2 (5 layers passed) type 3, which needs h_6: refused
    with pytest.raises(SpdsimError, match="depth 2 to aggregation type 3") as error:
        SpdHeadConfig.build(
            _Shape8(),
            num_stages=4,
            num_spec_layers=1,
            stage_layers=[3, 2, 2, 1],
            aggr_feature_bound="0,2,4,6,7",
        )
    assert "\n" not in str(error.value)


def qwen35_base():
    from transformers import AutoConfig

    from executor.model_presets import PRESETS

    fields = dict(PRESETS["tiny-qwen3.5"])
    fields.pop("architectures")
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def authors_qwen35_checkpoint(base, num_stages=4, spec_layers=2):
    """A checkpoint laid out exactly as the reference `train.py::save_speculation_head_checkpoint` writes one for a
    Qwen3.5 base (docs/spd.md §2.4, §2.6), by hand: gated q_proj [2·nh·hd, H], bf16 tensors, the default bound
    "0,8,16,24,31" scaled to L = 8, no spec_init_from_base_layers key, a sorted draft vocabulary."""
    h, nh, kv, hd, ffn = base.hidden_size, base.num_attention_heads, base.num_key_value_heads, 16, 128
    bound = [0, 2, 4, 6, 7]
    draft_ids = list(range(0, base.vocab_size, 3))
    gen = torch.Generator().manual_seed(7)

    def rand(*shape, scale=0.05):
        return (scale * torch.randn(*shape, generator=gen)).to(torch.bfloat16)

    state = {f"aggr_projs.{a}.weight": rand(h, (a + 1) * h) for a in range(len(bound))}
    state["lm_head.weight"] = rand(len(draft_ids), h)
    for j in range(spec_layers):
        p = f"spec_layers.{j}."
        state[p + "input_layernorm.weight"] = rand(h)  # zero-centred: x̂·(1 + w)
        state[p + "post_attention_layernorm.weight"] = rand(h)
        state[p + "self_attn.q_proj.weight"] = rand(2 * nh * hd, h)
        state[p + "self_attn.k_proj.weight"] = rand(kv * hd, h)
        state[p + "self_attn.v_proj.weight"] = rand(kv * hd, h)
        state[p + "self_attn.o_proj.weight"] = rand(h, nh * hd)
        state[p + "self_attn.q_norm.weight"] = rand(hd)
        state[p + "self_attn.k_norm.weight"] = rand(hd)
        state[p + "mlp.gate_proj.weight"] = rand(ffn, h)
        state[p + "mlp.up_proj.weight"] = rand(ffn, h)
        state[p + "mlp.down_proj.weight"] = rand(h, ffn)
    config = {
        "hidden_size": h,
        "vocab_size": base.vocab_size,
        "model_type": "qwen3_5",
        "base_model_path": "Qwen/Qwen3.5-tiny",
        "draft_vocab_size": len(draft_ids),
        "num_stages": num_stages,
        "num_spec_layers": spec_layers,
        "version": 11,
        "trained_with_use_deepest": True,
        "aggr_feature_bound": bound,
        "num_aggr_types": len(bound),
        "draft_token_ids": draft_ids,
        "spec_intermediate_size_fallback": 9216,
    }
    return {"state_dict": state, "config": config}


def test_authors_qwen35_checkpoint_loads_strictly_and_drafts_on_the_hybrid_model(tmp_path):
    from executor.hybrid import HybridModel
    from executor.models import load_fast_model
    from executor.schedules import run_method

    base = qwen35_base()
    ckpt = authors_qwen35_checkpoint(base)
    torch.save(ckpt, tmp_path / "Qwen3.5-tiny_s4_l2.pt")
    module = load_spd_checkpoint(tmp_path / "Qwen3.5-tiny_s4_l2.pt", base)
    assert set(module.state_dict()) == set(ckpt["state_dict"])
    for key, tensor in ckpt["state_dict"].items():
        assert torch.equal(module.state_dict()[key], tensor), key
    assert module.lm_head.weight.dtype == torch.bfloat16
    assert module.aggr_of_depth == (
        0,
        1,
        2,
        3,
        4,
    )  # 0,2,4,6,7 at two layers per stage, as 0,8,16,24,31 at L=32
    fast, _ = load_fast_model("random:tiny-qwen3.5")
    assert isinstance(fast, HybridModel)
    prompt_set = [("a", [5, 9, 2, 7, 11, 3]), ("b", [40, 41, 42, 43, 44])]
    result = run_method("spd", fast, prompt_set, max_new_tokens=10, head=tmp_path / "Qwen3.5-tiny_s4_l2.pt")
    reference = run_method("ar", fast, prompt_set, max_new_tokens=10)
    assert [r.tokens for r in result.prompts] == [r.tokens for r in reference.prompts]
    assert result.config["stages"] == 4
