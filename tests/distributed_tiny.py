"""The tiny Qwen3 model source and prompts shared by the multi-process executor tests (SPD stages, TP shards).

A ``ModelSource`` rather than a model: every spawned rank builds the same seeded random weights itself.
"""

import numpy as np

from executor.distributed import ModelSource

VOCAB = 96


def tiny_config_fields(vocab: int, layers: int, max_positions: int) -> dict:
    """HF config fields of the tiny test models: hidden 32, 4 query / 2 KV heads of 8, MLP 64, untied."""
    return dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
    )


def tiny_source(layers: int) -> ModelSource:
    """A random tiny Qwen3 with ``layers`` decoder layers, built by every rank from the same seed."""
    return ModelSource(
        "config:qwen3", hf_config=tuple(tiny_config_fields(VOCAB, layers, 256).items()), max_seq_len=256
    )


def prompt_set(count, seed=3):
    rng = np.random.default_rng(seed)
    return [(f"p{i}", rng.integers(0, VOCAB, rng.integers(3, 9)).tolist()) for i in range(count)]
