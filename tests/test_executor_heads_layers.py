"""The heads' decoder layer is numerically transformers' Qwen3DecoderLayer, and its KV cache crops exactly."""

import torch
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RotaryEmbedding

from executor.heads.layers import DecoderLayer, HeadKVCache, LayerShape, full_vocab_ids, init_linear_weights


def tiny():
    config = Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
    )
    config._attn_implementation = "sdpa"
    return config


def test_layer_matches_transformers_qwen3_decoder_layer():
    torch.manual_seed(0)
    config = tiny()
    ours = DecoderLayer(LayerShape.from_base_config(config))
    init_linear_weights(ours)
    for p in ours.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    theirs = Qwen3DecoderLayer(config, layer_idx=0)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    rotary = Qwen3RotaryEmbedding(config)
    x = torch.randn(1, 7, 32)
    positions = torch.arange(3, 10)[None]
    cos_sin = rotary(x, positions)
    mask = torch.full((7, 7), float("-inf")).triu(1)[None, None]
    expected = theirs(x, attention_mask=mask, position_ids=positions, position_embeddings=cos_sin)
    torch.testing.assert_close(ours(x, cos_sin), expected, rtol=1e-5, atol=1e-5)


def layer_inputs(seed: int, rows: int):
    """A seeded head layer, its rotary embedding, ``rows`` random inputs, their positions and the uncached output."""
    torch.manual_seed(seed)
    config = tiny()
    layer = DecoderLayer(LayerShape.from_base_config(config))
    init_linear_weights(layer)
    rotary = Qwen3RotaryEmbedding(config)
    x = torch.randn(1, rows, 32)
    positions = torch.arange(rows)[None]
    return layer, rotary, x, positions, layer(x, rotary(x, positions))


def test_cached_incremental_equals_full_and_crop_rolls_back():
    layer, rotary, x, positions, full = layer_inputs(1, 6)
    cache = HeadKVCache(1, 2, 8, "cpu", torch.float32, capacity=2)
    first = layer(x[:, :4], rotary(x[:, :4], positions[:, :4]), 0, cache)
    cache.length = 4
    wrong = torch.randn(1, 2, 32)
    layer(wrong, rotary(wrong, positions[:, 4:]), 0, cache)
    cache.length = 6
    cache.crop(4)  # reject the two wrong rows
    rest = layer(x[:, 4:], rotary(x[:, 4:], positions[:, 4:]), 0, cache)
    torch.testing.assert_close(torch.cat([first, rest], 1), full, rtol=1e-5, atol=1e-5)


def test_cache_capacity_is_quantised_and_growth_keeps_the_attention_exact():
    """The attention width is the cache's capacity (a multiple of 256): prompts of similar length share shapes,
    and growing past it (here 300 rows) still gives exactly the uncached result."""
    layer, rotary, x, positions, full = layer_inputs(2, 300)
    cache = HeadKVCache(1, 2, 8, "cpu", torch.float32, capacity=100)
    assert cache.keys.shape[3] == 256
    first = layer(x[:, :250], rotary(x[:, :250], positions[:, :250]), 0, cache)
    cache.length = 250
    rest = layer(x[:, 250:], rotary(x[:, 250:], positions[:, 250:]), 0, cache)
    assert cache.keys.shape[3] == 512
    torch.testing.assert_close(torch.cat([first, rest], 1), full, rtol=1e-4, atol=1e-4)


def test_full_vocab_ids_maps_a_0_dim_index_without_reading_it_on_the_host():
    """``table[index]`` with a 0-dim tensor index calls ``_local_scalar_dense`` (a host sync, fatal inside a CUDA-graph
    capture); the draft-to-full id lookup must not."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    table = torch.arange(10) * 3
    for index in (torch.tensor(4), torch.tensor([4, 7])):
        with Ops() as ops:
            ids = full_vocab_ids(table, index)
        assert torch.equal(ids, table[index])
        assert ids.shape == index.shape
        assert not any("_local_scalar_dense" in name for name in ops.names), ops.names
    with Ops() as ops:
        table[torch.tensor(4)]
    assert any("_local_scalar_dense" in name for name in ops.names)  # the pattern this guards against
