"""The committed prompt-length table is what its script writes, and the approximate count behaves as stated."""

from __future__ import annotations

import json

from executor.prompt_lengths import APPROXIMATION, TABLE, approximate_tokens, build_table, table_text
from executor.prompts import DATASETS, raw_prompts


def test_committed_table_is_reproduced_by_its_script():
    """The approximate table is rebuilt byte for byte; a table counted with a tokenizer keeps one count per
    prompt, in the prompt files' order."""
    table = json.loads(TABLE.read_text())
    if table["tokenizer"] == APPROXIMATION:
        assert TABLE.read_text() == table_text(build_table())
    for dataset in DATASETS:
        assert len(table["datasets"][dataset]["prompt_tokens"]) == len(raw_prompts(dataset))


def test_approximation_counts_pieces_digits_and_long_words():
    assert approximate_tokens("the cat sat") == 3
    assert approximate_tokens("2024") == 4  # Qwen2 and SmolLM2 split numbers into digits
    assert approximate_tokens("internationalization") == 4  # 20 letters, one token per 6
    assert approximate_tokens("print(x)") == 3  # "print", "(x", ")": a symbol joins the letters after it
    assert approximate_tokens("") == 0
