"""The tiny Qwen3 model source and prompts shared by the multi-process executor tests (SPD stages, TP shards).

A ``ModelSource`` rather than a model: every spawned rank builds the same seeded random weights itself.
"""

import numpy as np

from executor.distributed import ModelSource

VOCAB = 96


def tiny_source(layers: int) -> ModelSource:
    """A random Qwen3 (hidden 32, 4 query / 2 KV heads, MLP 64) with ``layers`` decoder layers."""
    return ModelSource(
        "config:qwen3",
        hf_config=tuple(
            dict(
                vocab_size=VOCAB,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=layers,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=8,
                max_position_embeddings=256,
                tie_word_embeddings=False,
            ).items()
        ),
        max_seq_len=256,
    )


def prompt_set(count, seed=3):
    rng = np.random.default_rng(seed)
    return [(f"p{i}", rng.integers(0, VOCAB, rng.integers(3, 9)).tolist()) for i in range(count)]
