"""EAGLE-3-style chain head: shapes (3H fuse, 2H attention input), cached stepping, save/load."""

import pytest
import torch
from transformers import LlamaConfig, Qwen3Config

from executor.heads.eagle3 import Eagle3Head, Eagle3HeadConfig, load_eagle3, save_eagle3
from spdsim.errors import SpdsimError


def base(kind="qwen3", hidden=32):
    cls = Qwen3Config if kind == "qwen3" else LlamaConfig
    return cls(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=48,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=512,
    )


def test_shapes_follow_eagle3():
    head = Eagle3Head(base(), Eagle3HeadConfig.build(base(), draft_token_ids=[2, 5, 7, 11]))
    assert head.head_config.feature_layers == (2, 3, 3)
    assert head.fc.weight.shape == (32, 96)
    assert head.layer.self_attn.q_proj.weight.shape == (32, 64)  # 2H attention input
    assert head.lm_head.weight.shape == (4, 32)


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
def test_incremental_steps_equal_one_causal_pass(kind):
    torch.manual_seed(0)
    head = Eagle3Head(base(kind), Eagle3HeadConfig.build(base(kind)))
    feats = {i: torch.randn(1, 5, 32) for i in range(7)}
    hidden, embeds, positions = head.fuse(feats), torch.randn(1, 5, 32), torch.arange(5)
    full_out, full_logits = head.step(hidden, embeds, positions, None)
    cache = head.new_cache(capacity=1)
    out_a, _ = head.step(hidden[:, :3], embeds[:, :3], positions[:3], cache)
    cache.length = 3
    out_b, logits_b = head.step(hidden[:, 3:], embeds[:, 3:], positions[3:], cache)
    torch.testing.assert_close(torch.cat([out_a, out_b], 1), full_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_b, full_logits[:, 3:], rtol=1e-5, atol=1e-5)


def test_round_trip_and_refusals(tmp_path):
    config = base()
    head = Eagle3Head(config, Eagle3HeadConfig.build(config, draft_token_ids=[1, 2, 3]))
    save_eagle3(head, tmp_path / "e.pt")
    loaded = load_eagle3(tmp_path / "e.pt", config)
    for key, tensor in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor)
    assert loaded.draft_token_ids.tolist() == [1, 2, 3]
    with pytest.raises(SpdsimError, match="'qwen3' base, not 'llama'"):
        load_eagle3(tmp_path / "e.pt", base("llama"))
    with pytest.raises(SpdsimError, match="hidden_size 32 does not match"):
        load_eagle3(tmp_path / "e.pt", base(hidden=64))
    with pytest.raises(SpdsimError, match="does not exist"):
        load_eagle3(tmp_path / "nope.pt", config)
