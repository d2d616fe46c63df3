"""Arrival processes and request lengths: rates, bounds, trace replay and its one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from spdsim.engine.arrivals import build_requests, concurrency_limit, read_trace
from spdsim.errors import SpdsimError
from spdsim.scenario.config import Scenario, Workload


def _requests(**workload):
    return build_requests(Scenario(workload=Workload(**workload), seed=11))


@pytest.mark.parametrize("burstiness", [1.0, 0.25, 4.0])
def test_gamma_arrivals_have_the_rate_and_the_burstiness(burstiness):
    """Inter-arrival mean 1/rate; coefficient of variation 1/sqrt(burstiness) (1: Poisson)."""
    requests = _requests(num_requests=20_000, arrival_rate=50.0, burstiness=burstiness)
    gaps = np.diff([r.arrival_ns for r in requests]) / 1e9
    assert gaps.mean() == pytest.approx(1 / 50.0, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(burstiness**-0.5, rel=0.05)
    assert requests[0].arrival_ns == 0


def test_lengths_uniform_within_the_range_ratio_and_fixed_without_it():
    requests = _requests(num_requests=2_000, prompt_tokens=100, new_tokens=10, length_range_ratio=0.5)
    prompts = [r.prompt_tokens for r in requests]
    outputs = [r.new_tokens for r in requests]
    assert min(prompts) == 50 and max(prompts) == 150
    assert min(outputs) >= 5 and max(outputs) <= 15
    assert {r.new_tokens for r in _requests(num_requests=5)} == {512}


def test_arrival_kind_is_inferred_and_checked():
    assert Workload().arrival_kind == "sequential" and concurrency_limit(Workload()) == 1
    assert Workload(arrival_rate=2.0).arrival_kind == "poisson"
    assert Workload(arrival_rate=2.0, burstiness=0.5).arrival_kind == "gamma"
    assert Workload(max_concurrency=8).arrival_kind == "closed"
    assert concurrency_limit(Workload(arrival_rate=2.0)) == 0
    with pytest.raises(SpdsimError, match="arrival_rate"):
        Workload(arrival="poisson")
    with pytest.raises(SpdsimError, match="max_concurrency"):
        Workload(arrival="closed")
    with pytest.raises(SpdsimError, match="unknown"):
        Workload(arrival="uniform")


def test_trace_replay_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(
        '{"timestamp": 0, "input_length": 10, "output_length": 3, "hash_ids": [1]}\n'
        '{"timestamp": 2.5, "input_length": 7, "output_length": 1}\n'
    )
    requests = read_trace(jsonl)
    assert [(r.arrival_ns, r.prompt_tokens, r.new_tokens) for r in requests] == [
        (0, 10, 3),
        (2_500_000, 7, 1),
    ]
    csv = tmp_path / "t.csv"
    csv.write_text("timestamp,input_length,output_length\n0,10,3\n2.5,7,1\n")
    assert read_trace(csv) == requests
    assert build_requests(Scenario(workload=Workload(trace_path=str(csv)))) == requests


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"timestamp": 0, "input_length": 1}\n', "lacks output_length"),
        (
            '{"timestamp": 5, "input_length": 1, "output_length": 2}\n{"timestamp": 1, "input_length": 1, "output_length": 2}\n',
            "must not decrease",
        ),
        ("not json\n", "not JSON"),
        ('{"timestamp": "x", "input_length": 1, "output_length": 2}\n', "non-numeric"),
        ('{"timestamp": Infinity, "input_length": 1, "output_length": 2}\n', "non-numeric"),
        ("5\n", "row 1 is not an object"),
    ],
)
def test_bad_traces_give_one_line_errors(tmp_path, text, message):
    path = tmp_path / "t.jsonl"
    path.write_text(text)
    with pytest.raises(SpdsimError, match=message):
        read_trace(path)


def test_prompt_file_lengths_take_every_prompt_once_before_repeating():
    from spdsim.engine.arrivals import prompt_table

    table = prompt_table()["datasets"]["gsm8k"]["prompt_tokens"]
    requests = _requests(num_requests=len(table) + 5, lengths="prompts:gsm8k", new_tokens=64)
    prompts = [r.prompt_tokens for r in requests]
    assert sorted(prompts[: len(table)]) == sorted(table)  # one pass over the dataset, shuffled
    assert prompts[: len(table)] != table
    assert set(prompts[len(table) :]) <= set(table)
    assert {r.new_tokens for r in requests} == {64}
    assert requests == _requests(num_requests=len(table) + 5, lengths="prompts:gsm8k", new_tokens=64)


def test_answer_lengths_keep_each_prompt_with_its_own_answer():
    from spdsim.engine.arrivals import prompt_table

    entry = prompt_table()["datasets"]["humaneval"]
    pairs = set(zip(entry["prompt_tokens"], entry["answer_tokens"], strict=True))
    requests = _requests(num_requests=50, lengths="answers:humaneval", arrival_rate=10.0)
    assert all((r.prompt_tokens, r.new_tokens) in pairs for r in requests)
    assert len({r.new_tokens for r in requests}) > 10


def test_prompt_table_covers_the_datasets_the_workload_accepts():
    from spdsim.engine.arrivals import prompt_table
    from spdsim.scenario.config import ANSWER_DATASETS, PROMPT_DATASETS

    datasets = prompt_table()["datasets"]
    assert set(datasets) == set(PROMPT_DATASETS)
    assert {name for name, entry in datasets.items() if entry["answer_tokens"]} == set(ANSWER_DATASETS)
    assert all(min(entry["prompt_tokens"]) > 0 for entry in datasets.values())


@pytest.mark.parametrize("lengths", ["prompts:sharegpt", "answers:mt_bench", "gsm8k", "prompt:gsm8k"])
def test_bad_lengths_are_one_line_errors(lengths):
    with pytest.raises(SpdsimError, match="^workload.lengths: .*must be prompts:"):
        Workload(lengths=lengths)
