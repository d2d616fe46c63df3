"""Static KV cache: crop is a correct rollback, lengths per layer range, bucketed windows, the warm-up prompts
(one per starting window)."""

from __future__ import annotations

import pytest
import torch
from distributed_tiny import tiny_config_fields
from hypothesis import given
from hypothesis import strategies as st

from executor.cache import KVCache, kv_bucket
from executor.fastmodel import FastModel
from executor.models import load_model
from executor.schedules.base import greedy_continuation, warmup_prompts
from executor.schedules.common import Prompt, as_prompts


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


def _logits_and_windows_by_cache_size(
    device: str, compiled: bool = False
) -> tuple[list[torch.Tensor], list[list[int]]]:
    """One bf16 model; three caches asked for different lengths; positions 260-299 decoded one token at a time
    through `forward_tokens` (the path every speculative schedule uses). Returns logits and attention windows."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from executor.schedules.base import forward_tokens

    fields = dict(
        tiny_config_fields(256, 2, 2048), hidden_size=128, intermediate_size=256, num_attention_heads=8
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = Qwen3ForCausalLM(Qwen3Config(**fields))
    model = FastModel.from_hf(hf.eval(), device=device, dtype=torch.bfloat16, max_seq_len=2048)
    if compiled:
        model.compile_layers()
    windows: list[int] = []
    forward_layers = model.forward_layers

    def spy(*args, **kwargs):
        windows.append(kwargs["kv_len"])
        return forward_layers(*args, **kwargs)

    model.forward_layers = spy
    tokens = torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(1)).tolist()
    logits, windows_by_cache = [], []
    with torch.inference_mode():
        for max_len in (301, 420, 700):
            cache = model.new_cache(max_len)
            forward_tokens(model, tokens[:260], 0, cache)
            windows.clear()
            rows = [
                model.head(forward_tokens(model, [t], 260 + i, cache)[0])[0, 0]
                for i, t in enumerate(tokens[260:])
            ]
            logits.append(torch.stack(rows).cpu())
            windows_by_cache.append(list(windows))
    return logits, windows_by_cache


def test_the_attention_window_is_a_function_of_position_alone() -> None:
    """AR, every SPD stage, the drafter's target pass and the synthetic reference size their caches differently;
    the window must not follow the cache size, or GPU bf16 reductions (and argmaxes) drift apart. (CPU bf16 GEMMs
    happen to be window-invariant, so on the CPU the windows are what can differ; the GPU test checks logits.)"""
    logits, windows = _logits_and_windows_by_cache_size("cpu")
    assert windows[0] == windows[1] == windows[2]
    assert set(windows[0]) == {512}
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_same_token_at_the_same_position_gives_bit_identical_bf16_logits_on_the_gpu() -> None:
    logits, windows = _logits_and_windows_by_cache_size("cuda")
    assert windows[0] == windows[1] == windows[2]
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])


def test_caches_of_every_size_and_mode_share_one_compile_of_the_layer() -> None:
    """A decode cache spans the model's whole context and is an ordinary tensor, so a compiled step is compiled
    once per (query tokens, window) whichever schedule made the cache (AR's, a lookahead's, the synthetic
    reference's inside inference mode): on a GPU every extra compile tunes its reductions anew (other rounding)."""
    from torch._dynamo.testing import CompileCounter

    from executor.schedules.base import forward_tokens

    model = FastModel.from_hf(load_model("random:tiny-qwen3", seed=5).hf_model, max_seq_len=1024)
    counter = CompileCounter()
    model.compile_layers(backend=counter)
    tokens = list(range(3, 40))
    frames = []
    for max_len, made_in_inference_mode in ((64, False), (300, True), (900, False), (None, True)):
        with torch.inference_mode(made_in_inference_mode):
            cache = model.new_cache(max_len)
        with torch.inference_mode():  # every schedule decodes in inference mode
            forward_tokens(model, tokens[:30], 0, cache)  # prefill: eager
            for i, token in enumerate(tokens[30:]):  # one-token steps, all in window 256
                model.head(forward_tokens(model, [token], 30 + i, cache)[0])
        frames.append(counter.frame_count)
        assert cache.max_len == 1024
    assert frames[0] > 0 and frames == [frames[0]] * 4
    model.uncompile_layers()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_same_token_at_the_same_position_gives_bit_identical_bf16_logits_compiled_on_the_gpu() -> None:
    """The same as above through inductor (the timed paths compile): one compile, one rounding, for every cache."""
    logits, windows = _logits_and_windows_by_cache_size("cuda", compiled=True)
    assert windows[0] == windows[1] == windows[2]
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])


def _of_lengths(*lengths: int) -> list[Prompt]:
    return as_prompts([(f"p{i}", [1] * length) for i, length in enumerate(lengths)])


@pytest.mark.parametrize(
    "lengths,lookahead,expected",
    [
        ((177, 300, 342), 0, ("p0", "p2")),  # windows 256, 512, 512: the longest of the 512 group
        ((300, 177, 342, 100), 0, ("p2", "p1")),  # first-appearance order of the groups
        ((10, 50, 30), 0, ("p1",)),  # one window: only the longest
        ((40, 40), 0, ("p0",)),  # a tie keeps the first
        ((177,), 0, ("p0",)),
        ((200, 254), 0, ("p1",)),  # both start in window 256 ...
        ((200, 254), 2, ("p0", "p1")),  # ... but 254's first 3 positions cross into 512, 200's do not
        ((253, 254), 3, ("p0", "p1")),  # they cross at different positions (fill rows meet other windows)
    ],
)
def test_warmup_prompts_are_the_longest_of_each_starting_window(
    lengths: tuple[int, ...], lookahead: int, expected: tuple[str, ...]
) -> None:
    assert tuple(p.prompt_id for p in warmup_prompts(_of_lengths(*lengths), lookahead)) == expected


@pytest.mark.parametrize("rows", [2, 4, 8])
def test_a_reference_in_the_verify_shape_is_the_greedy_continuation(rows: int) -> None:
    """Each token from the first row of a ``rows``-token pass (the chain verify's shape) is the greedy token: the
    same continuation as the AR schedule's in float32, across a window boundary (positions past 256)."""
    model = FastModel.from_hf(load_model("random:tiny-qwen3", seed=5).hf_model, max_seq_len=512)
    prefix = torch.randint(
        0, model.cfg.vocab_size, (250,), generator=torch.Generator().manual_seed(1)
    ).tolist()
    assert greedy_continuation(model, prefix, 12, rows=rows) == greedy_continuation(model, prefix, 12)
