"""Write the simulator's table of prompt and reference-answer token counts (``spdsim/profiles/prompts``).

The simulator must not import torch or transformers, so the lengths of the evaluation prompts
(``executor/prompts.py``) are counted once here and committed. With ``--tokenizer PATH`` (a local tokenizer
directory, e.g. SmolLM2's or Qwen3's) the counts are exact: the prompt through the chat template, the answer
plus its end-of-turn token. Without one, ``approximate_tokens`` stands in (its rule is in its docstring and in
the table's ``tokenizer`` field).

    python -m executor.prompt_lengths [--tokenizer PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

from executor.prompts import DATASETS, PROMPT_DIR, _read_jsonl, chat_token_ids, raw_prompts

TABLE = Path(__file__).resolve().parents[1] / "spdsim" / "profiles" / "prompts" / "prompt_lengths.json"
CHAT_FRAME_TOKENS = (
    8  # <|im_start|> user \n ... <|im_end|> \n <|im_start|> assistant \n (ChatML, no system turn)
)
APPROXIMATION = (
    "approximation (no tokenizer offline): pieces of the Qwen2 pre-tokenizer regex (digits one by one), one token "
    "each, a letter run over 8 characters one token per 6; prompts plus 8 ChatML frame tokens, answers plus 1 "
    "end-of-turn token; not checked against a real tokenizer"
)
# Qwen2's pre-tokenizer split (letters with an optional leading symbol, single digits, punctuation runs, spaces)
_PIECES = re.compile(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\w]?[^\W\d_]+|\d| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+|_+"
)


def approximate_tokens(text: str) -> int:
    """Token count without a tokenizer: one per pre-tokenizer piece, long letter runs split (module docstring)."""
    count = 0
    for piece in _PIECES.findall(text):
        letters = piece.lstrip(" ") if piece[:1] == " " else piece
        count += math.ceil(len(letters) / 6) if len(letters) > 8 and letters.isalpha() else 1
    return count


def reference_answers(dataset: str) -> list[str] | None:
    """The reference answer of each prompt, in ``raw_prompts`` order; None where the dataset has none."""
    if dataset == "gsm8k":
        return [r["answer"] for r in _read_jsonl(PROMPT_DIR / "gsm8k_test.jsonl")]
    if dataset == "humaneval":
        return [r["canonical_solution"] for r in _read_jsonl(PROMPT_DIR / "humaneval.jsonl.gz")]
    return None


def build_table(tokenizer: Any = None, name: str = "") -> dict[str, Any]:
    """Per dataset: ``prompt_tokens`` of every prompt and ``answer_tokens`` of its reference answer (or null)."""
    datasets: dict[str, Any] = {}
    for dataset in DATASETS:
        texts = [text for _, text in raw_prompts(dataset)]
        answers = reference_answers(dataset)
        if tokenizer is None:
            prompts = [approximate_tokens(t) + CHAT_FRAME_TOKENS for t in texts]
            counted = [approximate_tokens(a) + 1 for a in answers] if answers else None
        else:
            prompts = [len(chat_token_ids(tokenizer, t)) for t in texts]
            counted = (
                [len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers]
                if answers
                else None
            )
        datasets[dataset] = {"prompt_tokens": prompts, "answer_tokens": counted}
    return {
        "source": "executor/data/prompts (see its SOURCES.md), counted by `python -m executor.prompt_lengths`",
        "tokenizer": f"{name} (chat template)" if tokenizer is not None else APPROXIMATION,
        "datasets": datasets,
    }


def table_text(table: dict[str, Any]) -> str:
    """JSON with each list on one line (small diffs when regenerated)."""
    lines = [
        "{",
        f'  "source": {json.dumps(table["source"])},',
        f'  "tokenizer": {json.dumps(table["tokenizer"])},',
    ]
    lines.append('  "datasets": {')
    names = list(table["datasets"])
    for i, dataset in enumerate(names):
        entry = table["datasets"][dataset]
        lines.append(f'    "{dataset}": {{')
        lines.append(f'      "prompt_tokens": {json.dumps(entry["prompt_tokens"])},')
        lines.append(f'      "answer_tokens": {json.dumps(entry["answer_tokens"])}')
        lines.append("    }" + ("," if i < len(names) - 1 else ""))
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tokenizer", help="local tokenizer directory (exact counts); default: approximation"
    )
    parser.add_argument("--out", default=str(TABLE))
    args = parser.parse_args(argv)
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
    Path(args.out).write_text(table_text(build_table(tokenizer, args.tokenizer or "")))


if __name__ == "__main__":
    main()
