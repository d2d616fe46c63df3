"""Training corpus: disjoint from the evaluation prompts, packed into full blocks, cached, deterministic."""

import torch
from train_tiny import one_thread_fixture

from executor.models import load_fast_model
from executor.prompts import raw_prompts
from executor.train.corpus import (
    CorpusConfig,
    gsm8k_train_questions,
    load_or_build_corpus,
    pack_blocks,
    target_answers,
)

one_thread = one_thread_fixture()


def test_gsm8k_train_questions_are_not_evaluation_prompts():
    train = set(gsm8k_train_questions(10_000))
    assert len(train) > 7000
    evaluation = {text for name in ("gsm8k", "mt_bench", "humaneval") for _, text in raw_prompts(name)}
    assert not train & evaluation


def test_pack_blocks_keeps_only_full_blocks_with_separators():
    blocks = pack_blocks([[1, 2, 3], [4, 5]], block_len=3, separator=9)
    assert blocks.tolist() == [[1, 2, 3], [9, 4, 5]]  # the trailing separator is dropped


def test_corpus_is_cached_and_answers_come_from_the_target(tmp_path):
    _, loaded = load_fast_model("random:tiny-llama", seed=0)
    prompt_and_answer = target_answers(loaded.hf_model, loaded.tokenizer, ["What is 2+2?", "Hi"], 3, batch=2)
    for question, ids in zip(["What is 2+2?", "Hi"], prompt_and_answer, strict=True):
        chat = loaded.tokenizer.apply_chat_template([{"role": "user", "content": question}])
        assert ids[: len(chat)] == chat and len(ids) <= len(chat) + 3
    config = CorpusConfig(block_len=32, source_bytes=2000, site_packages=False, gsm8k_questions=0)
    messages = []
    first = load_or_build_corpus(loaded.hf_model, loaded.tokenizer, "tiny", config, tmp_path, messages.append)
    second = load_or_build_corpus(
        loaded.hf_model, loaded.tokenizer, "tiny", config, tmp_path, messages.append
    )
    assert torch.equal(first.blocks, second.blocks) and "cached" in messages[-1]
    assert first.stats["tokens_by_source"]["pydoc_topics"] > 0 and first.blocks.shape[1] == 32
