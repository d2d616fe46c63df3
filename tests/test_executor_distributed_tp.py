"""Tensor-parallel AR on the CPU (gloo, 2 ranks, tiny float32 model): token-identical to single-process greedy
AR, temperature sampling identical to the AR schedule's, a killed rank named within the timeout, and the run
directory it writes replays in ``spdsim validate`` with a TP-aware profile."""

import time

import numpy as np
import pytest
import torch

from executor.distributed import DistributedError, ModelSource
from executor.distributed.tp import ShardedModel, check_tp_degree, run_tensor_parallel
from executor.schedules.common import DecodeOptions
from executor.schedules.dispatch import run_ar
from spdsim.errors import SpdsimError

VOCAB = 96
SOURCE = ModelSource(
    "config:qwen3",
    hf_config=tuple(
        dict(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=256,
            tie_word_embeddings=False,
        ).items()
    ),
    max_seq_len=256,
)
NEW_TOKENS = 12


def prompt_set(count, seed=3):
    rng = np.random.default_rng(seed)
    return [(f"p{i}", rng.integers(0, VOCAB, rng.integers(3, 9)).tolist()) for i in range(count)]


def test_one_shard_is_the_full_model():
    """Degree 1: the shard path (tp_decoder_layer) computes exactly what the fast model computes."""
    model = SOURCE.build("cpu")
    shard = ShardedModel(model, 0, 1)
    tokens = torch.tensor([[5, 7, 11, 13]])
    positions = torch.arange(4)
    expected = model(tokens, positions, model.new_cache(16))
    assert torch.equal(shard(tokens, positions, shard.new_cache(16)), expected)


def test_degree_must_divide_heads_and_mlp():
    model = SOURCE.build("cpu")
    check_tp_degree(model.cfg, 2)
    with pytest.raises(SpdsimError, match="num_kv_heads"):
        check_tp_degree(model.cfg, 4)


def test_two_ranks_decode_exactly_like_single_process_ar():
    prompts = prompt_set(3)
    jobs = [
        DecodeOptions(max_new_tokens=NEW_TOKENS),
        DecodeOptions(max_new_tokens=NEW_TOKENS, temperature=0.8, seed=7),
    ]
    greedy, sampled = run_tensor_parallel(SOURCE, prompts, 2, jobs, timeout_s=60)
    model = SOURCE.build("cpu")
    for result, job in ((greedy, jobs[0]), (sampled, jobs[1])):
        reference = run_ar(model, prompts, job, use_graphs=False)
        assert [p.tokens for p in result.prompts] == [p.tokens for p in reference.prompts]
        assert result.config["tp_degree"] == 2 and result.config["method"] == "ar"
        assert all(len(p.cycles) == len(p.tokens) - 1 for p in result.prompts)


def test_killed_rank_is_named_within_the_timeout():
    started = time.monotonic()
    with pytest.raises(DistributedError) as info:
        run_tensor_parallel(
            SOURCE,
            prompt_set(1),
            2,
            [DecodeOptions(max_new_tokens=NEW_TOKENS)],
            timeout_s=10,
            fault=("kill", 1, 2),
        )
    text = str(info.value)
    assert "rank 1 (tp shard 1) died (signal SIGKILL)" in text and "\n" not in text
    assert time.monotonic() - started < 30
