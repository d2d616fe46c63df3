"""Fast head path (executor.heads.fast_layer, FastEagle3): the packed functional layer over a position-masked
KVCache computes what the HF-style Eagle3Head.step computes (float32, allclose), incrementally and after a
rewind (crop-free rollback)."""

import pytest
import torch
from executor_tiny import tiny_model

from executor.heads.eagle3 import Eagle3Head, Eagle3HeadConfig, FastEagle3
from executor.heads.fast_layer import layer_shape, new_head_cache, pack_decoder_layer, run_head_layer
from executor.heads.layers import base_config_of


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def pair(request):
    model = tiny_model(seed=0, family=request.param, layers=4)
    base = base_config_of(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        head = Eagle3Head(base, Eagle3HeadConfig.build(base, draft_token_ids=list(range(0, 128, 2)))).eval()
        for p in head.parameters():  # non-trivial norms, so a swapped norm weight would show
            if p.dim() == 1:
                p.data.uniform_(0.5, 1.5)
    return model, head


def test_pack_fuses_qkv_and_gate_up(pair):
    _, head = pair
    w = pack_decoder_layer(head.layer)
    attn = head.layer.self_attn
    assert w.qkv.shape == (attn.q_proj.weight.shape[0] + 2 * attn.k_proj.weight.shape[0], 64)
    assert torch.equal(w.qkv[: attn.q_proj.weight.shape[0]], attn.q_proj.weight)
    inter = head.layer.mlp.up_proj.weight.shape[0]
    assert torch.equal(w.gate_up[inter:], head.layer.mlp.up_proj.weight)
    assert w.q_norm is not None and w.qkv_bias is None
    shape = layer_shape(head.layer)
    assert (shape.num_heads, shape.num_kv_heads, shape.head_dim) == (4, 2, 8)
    cache = new_head_cache(shape, 40, 512, "cpu", torch.float32)
    assert cache.num_layers == 1 and cache.max_len == 512  # the whole context, like the base model's caches


@torch.inference_mode()
def test_fast_step_matches_eagle3_head_step(pair):
    model, head = pair
    fast = FastEagle3.from_head(head, model)
    torch.manual_seed(0)
    feats = {i: torch.randn(1, 7, 32) for i in range(5)}
    tokens = torch.randint(0, 128, (1, 7))
    hidden, embeds = head.fuse(feats), model.embed(tokens)
    torch.testing.assert_close(fast.fuse(feats), hidden)
    ref_out, ref_logits = head.step(hidden, embeds, torch.arange(7), None)

    cache = fast.new_cache(64)
    window = 256
    out_a, logits_a = fast.step(hidden[:, :4], embeds[:, :4], torch.arange(4), cache, window)
    # garbage rows at positions 4..6 (a rejected speculation), then rewritten: position masking makes it free
    fast.step(torch.randn(1, 3, 32), torch.randn(1, 3, 32), torch.arange(4, 7), cache, window)
    out_b, logits_b = fast.step(hidden[:, 4:], embeds[:, 4:], torch.arange(4, 7), cache, window)
    torch.testing.assert_close(torch.cat([out_a, out_b], 1), ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([logits_a, logits_b], 1), ref_logits.float(), rtol=1e-5, atol=1e-5)
    full = head.full_vocab_logits(ref_logits[0, -1]).argmax()
    assert int(fast.full_ids(logits_b[0, -1].argmax())) == int(full)


@pytest.mark.parametrize("where", ["packed normally", "packed in inference mode", "loaded in inference mode"])
def test_a_packed_layer_reuses_the_targets_compiled_layer(where):
    """Packed in or out of inference mode, from weights loaded in or out of it, a head's layer has the target's
    weight types and dispatch keys, so the target's compile of a shape serves it: no second compile per shape
    (each costs seconds on a GPU)."""
    import copy

    from executor_tiny import VOCAB, tiny_config_fields
    from torch._dynamo.testing import CompileCounter
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from executor.fastmodel import FastModel

    torch.manual_seed(0)
    hf = Qwen3ForCausalLM(Qwen3Config(**tiny_config_fields(VOCAB, 2, 256))).eval()
    model = FastModel.from_hf(hf, max_seq_len=256)
    counter = CompileCounter()
    model.compile_layers(backend=counter)
    shape = layer_shape(hf.model.layers[0])
    with torch.inference_mode():
        hidden, positions = torch.randn(1, 1, model.cfg.hidden_size), torch.tensor([5])
        target = model.forward_layers(hidden, positions, 0, 1, model.new_cache(16), kv_len=256)[0]
        frames = counter.frame_count
    layer = hf.model.layers[0]
    if where == "loaded in inference mode":
        with torch.inference_mode():
            layer = copy.deepcopy(layer)
        assert layer.self_attn.q_proj.weight.is_inference()
    with torch.inference_mode(where == "packed in inference mode"):
        packed = pack_decoder_layer(layer)
    with torch.inference_mode():
        cache = new_head_cache(shape, 16, 256, "cpu", torch.float32)
        head = run_head_layer(model, packed, shape, hidden, positions, cache, 256)
    assert frames > 0 and counter.frame_count == frames
    torch.testing.assert_close(head, target)
