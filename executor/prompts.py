"""Evaluation prompt sets (MT-bench first turn, HumanEval, GSM8K test) with the model's chat template applied."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spdsim.contract import SpdsimError

PROMPT_DIR = Path(__file__).parent / "data" / "prompts"
DATASETS = ("mt_bench", "humaneval", "gsm8k")


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    text: str
    token_ids: tuple[int, ...]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def raw_prompts(dataset: str) -> list[tuple[str, str]]:
    """``(prompt_id, user message)`` pairs of one dataset, in file order."""
    if dataset == "mt_bench":
        return [
            (f"mt_bench/{r['question_id']}", r["turns"][0])
            for r in _read_jsonl(PROMPT_DIR / "mt_bench.jsonl")
        ]
    if dataset == "humaneval":
        return [(r["task_id"], r["prompt"]) for r in _read_jsonl(PROMPT_DIR / "humaneval.jsonl.gz")]
    if dataset == "gsm8k":
        rows = _read_jsonl(PROMPT_DIR / "gsm8k_test.jsonl")
        return [(f"gsm8k/{i}", r["question"]) for i, r in enumerate(rows)]
    raise SpdsimError(f"prompts: unknown dataset '{dataset}' (allowed: {', '.join(DATASETS)})")


def chat_token_ids(tokenizer: Any, text: str) -> tuple[int, ...]:
    """One user turn through the tokenizer's chat template, ending with the assistant header."""
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return tuple(int(i) for i in ids)


def load_prompts(datasets: str | list[str], tokenizer: Any, limit: int | None = None) -> list[Prompt]:
    """Prompts of one or more datasets (comma-separated string or list), ``limit`` per dataset."""
    names = [d.strip() for d in datasets.split(",")] if isinstance(datasets, str) else list(datasets)
    prompts: list[Prompt] = []
    for name in names:
        rows = raw_prompts(name)
        if limit is not None:
            rows = rows[:limit]
        prompts += [Prompt(pid, text, chat_token_ids(tokenizer, text)) for pid, text in rows]
    return prompts
