"""Prompt sets: counts of the evaluation protocol, chat template applied, clear errors."""

from __future__ import annotations

import pytest

from executor.models import ByteTokenizer
from executor.prompts import load_prompts, raw_prompts
from spdsim.errors import SpdsimError


def test_dataset_sizes() -> None:
    assert len(raw_prompts("mt_bench")) == 80
    assert len(raw_prompts("humaneval")) == 164
    assert len(raw_prompts("gsm8k")) == 1319


def test_chat_template_wraps_the_first_turn() -> None:
    tok = ByteTokenizer()
    prompts = load_prompts("mt_bench,gsm8k", tok, limit=3)
    assert [p.prompt_id for p in prompts][:1] == ["mt_bench/81"] and len(prompts) == 6
    text = tok.decode(list(prompts[0].token_ids))
    assert text.startswith("<|im_start|>user\nCompose an engaging travel blog post")
    assert text.endswith("<|im_start|>assistant\n")


def test_unknown_dataset() -> None:
    with pytest.raises(SpdsimError, match="allowed: mt_bench, humaneval, gsm8k"):
        raw_prompts("mmlu")
