"""Training text for the heads, disjoint from the evaluation prompts, tokenised into fixed-length blocks and cached.

Sources (docs/presets.md §4: what exists on every machine, GPU machines included): Python standard-library
source, installed site-packages source (capped), ``pydoc_data.topics`` (English prose) and GSM8K *train* questions
answered by the target itself (greedy, batched) in its chat template. The evaluation sets are MT-bench, HumanEval
and GSM8K *test*: none of these texts is among them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from spdsim.contract import SpdsimError

GSM8K_TRAIN = Path(__file__).parent / "data" / "gsm8k_train_questions.jsonl.gz"


@dataclass(frozen=True)
class CorpusConfig:
    """What goes into the corpus; its hash names the cache file."""

    block_len: int = 512
    source_bytes: int = 40_000_000  # cap on Python source text (stdlib first, then site-packages)
    site_packages: bool = True
    pydoc_topics: bool = True
    gsm8k_questions: int = 2000  # 0 = none
    gsm8k_new_tokens: int = 256
    gsm8k_batch: int = 128

    def key(self, model_tag: str) -> str:
        text = json.dumps({"model": model_tag, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Corpus:
    blocks: torch.Tensor  # [N, block_len] int64 token ids
    stats: dict[str, Any]


def python_source_files(site_packages: bool):
    """Standard-library ``.py`` files, then site-packages ones, each tree walked in sorted order (lazily)."""
    paths = sysconfig.get_paths()
    roots = [Path(paths["stdlib"])]
    if site_packages:
        roots += list(dict.fromkeys([Path(paths["purelib"]), Path(paths["platlib"])]))
    for index, root in enumerate(roots):
        for directory, subdirs, names in os.walk(root):
            subdirs.sort()
            if index == 0 and "site-packages" in subdirs:
                subdirs.remove("site-packages")
            for name in sorted(names):
                if name.endswith(".py"):
                    yield Path(directory) / name


def read_source_texts(files, byte_cap: int) -> list[str]:
    texts, total = [], 0
    for path in files:
        if total >= byte_cap:
            break
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if text.strip():
            texts.append(text)
            total += len(text)
    return texts


def pydoc_texts() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def gsm8k_train_questions(limit: int) -> list[str]:
    with gzip.open(GSM8K_TRAIN, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [row["question"] for row in rows[:limit]]


@torch.inference_mode()
def target_answers(hf_model, tokenizer, questions: list[str], new_tokens: int, batch: int) -> list[list[int]]:
    """Chat-formatted question + the target's own greedy answer, as token ids (left-padded batched generate)."""
    from executor.prompts import chat_token_ids

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad = pad[0] if isinstance(pad, (list, tuple)) else int(pad)
    device = next(hf_model.parameters()).device
    sequences = []
    for start in range(0, len(questions), batch):
        prompts = [list(chat_token_ids(tokenizer, q)) for q in questions[start : start + batch]]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        out = hf_model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        for prompt, row in zip(prompts, out[:, width:].tolist(), strict=True):
            answer = []
            for token in row:
                answer.append(token)
                if token == pad or token == tokenizer.eos_token_id:
                    break
            sequences.append(prompt + answer)
    return sequences


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    if callable(tokenizer):  # transformers tokenizers: batched fast path
        return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return [list(tokenizer.encode(text)) for text in texts]


def pack_blocks(documents: list[list[int]], block_len: int, separator: int) -> torch.Tensor:
    """Concatenate documents (each followed by ``separator``) and cut into full blocks; the tail is dropped."""
    stream: list[int] = []
    for doc in documents:
        stream += doc
        stream.append(separator)
    count = len(stream) // block_len
    if count == 0:
        raise SpdsimError(
            f"training corpus: {len(stream)} tokens do not fill one block of {block_len}; add text"
        )
    return torch.tensor(stream[: count * block_len], dtype=torch.long).view(count, block_len)


def build_corpus(hf_model, tokenizer, config: CorpusConfig, progress=print) -> Corpus:
    eos = tokenizer.eos_token_id
    separator = int(eos[0] if isinstance(eos, (list, tuple)) else eos)
    files = python_source_files(config.site_packages)
    source = read_source_texts(files, config.source_bytes)
    progress(f"corpus: {len(source)} Python source files ({sum(map(len, source)) / 1e6:.1f} MB)")
    docs = encode_texts(tokenizer, source)
    counts = {"python_source": sum(map(len, docs))}
    if config.pydoc_topics:
        topics = encode_texts(tokenizer, pydoc_texts())
        counts["pydoc_topics"] = sum(map(len, topics))
        docs += topics
    if config.gsm8k_questions:
        questions = gsm8k_train_questions(config.gsm8k_questions)
        progress(f"corpus: answering {len(questions)} GSM8K train questions with the target (greedy)")
        answered = target_answers(hf_model, tokenizer, questions, config.gsm8k_new_tokens, config.gsm8k_batch)
        counts["gsm8k_train_self_answers"] = sum(map(len, answered))
        docs += answered
    blocks = pack_blocks(docs, config.block_len, separator)
    stats = {
        "config": asdict(config),
        "tokens_by_source": counts,
        "blocks": int(blocks.shape[0]),
        "python_files": len(source),
        "sha256": hashlib.sha256(blocks.numpy().tobytes()).hexdigest(),
    }
    progress(f"corpus: {blocks.shape[0]} blocks of {config.block_len} tokens {counts}")
    return Corpus(blocks, stats)


def load_or_build_corpus(
    hf_model, tokenizer, model_tag: str, config: CorpusConfig, cache_dir: Path, progress=print
) -> Corpus:
    """The cached corpus for (model, config), built (and cached atomically) on first use."""
    path = (
        cache_dir
        / "train_corpus"
        / f"{model_tag.replace(':', '-').replace('/', '_')}-{config.key(model_tag)}.pt"
    )
    if path.is_file():
        payload = torch.load(path, map_location="cpu", weights_only=True)
        progress(f"corpus: cached {path} ({payload['blocks'].shape[0]} blocks)")
        return Corpus(payload["blocks"], json.loads(payload["stats"]))
    corpus = build_corpus(hf_model, tokenizer, config, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"blocks": corpus.blocks, "stats": json.dumps(corpus.stats)}, tmp)
    tmp.replace(path)
    return corpus
