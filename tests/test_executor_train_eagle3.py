"""EAGLE-3 chain head training-time test: mask, training rows == the chain schedule's draft passes, loss falls."""

import pytest
import torch
from train_tiny import one_thread_fixture

from executor.heads.eagle3 import load_eagle3, save_eagle3
from executor.heads.layers import HeadKVCache
from executor.models import load_fast_model
from executor.train.eagle3 import Eagle3Objective, ttt_forward, ttt_mask
from executor.train.features import teacher_forward
from executor.train.loop import LoopConfig, run_training
from executor.train.run import build_eagle3_head

one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def target():
    return load_fast_model("random:tiny-qwen3", seed=0)


def head_for(target):
    model, loaded = target
    torch.manual_seed(2)
    return build_eagle3_head(model, loaded.hf_model.config)


def test_ttt_mask_hand_checked():
    mask = ttt_mask(3, 2).int().tolist()
    # step-0 keys causal, then the same row of steps 1 and 2
    assert mask == [
        [1, 0, 0, 1, 0, 0, 1, 0, 0],
        [1, 1, 0, 0, 1, 0, 0, 1, 0],
        [1, 1, 1, 0, 0, 1, 0, 0, 1],
    ]


def test_ttt_steps_equal_the_chain_drafts(target):
    """Step k of row r == draft pass k of a chain anchored at r with the inference KV cache."""
    model, _ = target
    head = head_for(target).eval()
    tokens = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(4))
    feats = teacher_forward(model, tokens, head.head_config.feature_layers).features
    with torch.no_grad():
        trained = [logits[0] for _, _, logits in ttt_forward(head, model, tokens, feats, 3)]
        for r in range(0, 6):
            cache = HeadKVCache(
                1, head.layer.self_attn.num_kv_heads, head.layer.self_attn.head_dim, "cpu", torch.float32
            )
            fused = head.fuse({k: v[:, : r + 1] for k, v in feats.items()})
            out, logits = head.step(fused, model.embed(tokens[:, 1 : r + 2]), torch.arange(r + 1), cache)
            cache.length = r + 1
            torch.testing.assert_close(logits[0, -1], trained[0][r], atol=1e-4, rtol=1e-4)
            for step in (1, 2):
                token = tokens[:, r + step + 1 : r + step + 2]
                out, logits = head.step(out[:, -1:], model.embed(token), torch.tensor([r + step]), cache)
                cache.length += 1
                torch.testing.assert_close(logits[0, -1], trained[step][r], atol=1e-4, rtol=1e-4)


def test_a_few_steps_reduce_the_loss_and_the_head_round_trips(target, tmp_path):
    model, loaded = target
    head = head_for(target)
    blocks = torch.randint(0, 256, (16, 16), generator=torch.Generator().manual_seed(5))
    config = LoopConfig(max_steps=12, minutes=0, batch_size=4, lr=5e-3, warmup_steps=2)
    log = run_training(
        list(head.parameters()), Eagle3Objective(model, head, 3), blocks, config, torch.device("cpu"), False
    )
    assert sum(log.losses[-3:]) / 3 < 0.9 * sum(log.losses[:3]) / 3
    save_eagle3(head, tmp_path / "e.pt")
    loaded_head = load_eagle3(tmp_path / "e.pt", loaded.hf_model.config)
    for key, value in head.state_dict().items():
        torch.testing.assert_close(loaded_head.state_dict()[key], value)
