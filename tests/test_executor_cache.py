"""Static KV cache: crop is a correct rollback, lengths per layer range, bucketed windows."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from executor.cache import KVCache, kv_bucket
from executor.fastmodel import FastModel
from executor.models import load_model


@pytest.fixture(scope="module")
def fast() -> FastModel:
    return FastModel.from_hf(load_model("random:tiny-qwen3", seed=5).hf_model, max_seq_len=128)


def _logits(model: FastModel, cache: KVCache, tokens: list[int], start: int) -> torch.Tensor:
    positions = torch.arange(start, start + len(tokens))
    return model(torch.tensor([tokens]), positions, cache, kv_len=64)


def test_crop_rolls_back_rejected_tokens(fast: FastModel) -> None:
    prefix, wrong, right = [5, 9, 2, 7, 11, 3], [40, 41, 42], [17, 18, 19, 20]
    with torch.no_grad():
        fresh = _logits(fast, fast.new_cache(64), prefix + right, 0)[:, len(prefix) :]
        cache = fast.new_cache(64)
        _logits(fast, cache, prefix, 0)
        _logits(fast, cache, wrong, len(prefix))
        assert cache.length(0) == len(prefix) + len(wrong)
        cache.crop(len(prefix))
        assert [cache.length(i) for i in range(fast.num_layers)] == [len(prefix)] * fast.num_layers
        resumed = _logits(fast, cache, right, len(prefix))
        stale = _logits(fast, fast.new_cache(64), prefix + wrong[:1] + right[1:], 0)[:, len(prefix) :]
    assert torch.allclose(resumed, fresh, atol=1e-5)
    assert not torch.allclose(stale, fresh, atol=1e-3)  # the test can see a wrong context


def test_crop_of_a_layer_range_keeps_the_other_layers() -> None:
    cache = KVCache(6, 2, 4, 32)
    cache.note_written(0, 6, torch.arange(10))
    cache.crop(7, start_layer=2, end_layer=4)
    assert [cache.length(i) for i in range(6)] == [10, 10, 7, 7, 10, 10]
    cache.crop(12)  # never raises a length
    assert cache.length(0) == 10
    cache.note_written(2, 3, torch.tensor([8]))
    assert cache.length(2) == 9


@pytest.mark.parametrize("args", [(-1,), (3, 5, 2), (3, 0, 9)])
def test_bad_crop_arguments(args: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        KVCache(6, 2, 4, 32).crop(*args)


def test_nbytes_counts_keys_and_values() -> None:
    cache = KVCache(3, 2, 8, 16, dtype=torch.bfloat16)
    assert cache.nbytes(10) == 2 * 3 * 2 * 8 * 2 * 10
    assert cache.nbytes() == sum(t.numel() * t.element_size() for t in cache.keys + cache.values)


@given(st.integers(1, 5000), st.sampled_from([64, 256, 4096, 8192]))
def test_kv_bucket_covers_and_bounds(kv_len: int, max_len: int) -> None:
    if kv_len > max_len:
        with pytest.raises(ValueError):
            kv_bucket(kv_len, max_len)
        return
    bucket = kv_bucket(kv_len, max_len)
    assert kv_len <= bucket <= max_len
    assert bucket == max_len or bucket < max(2 * kv_len, 256) + 1
