"""The requests of a run: when each is sent and how long its prompt and output are (docs/serving.md §1).

Arrival processes: ``sequential`` (the paper's setting: one request after another), ``closed`` (every request is
ready at 0 and ``max_concurrency`` clients keep that many in flight), ``poisson`` / ``gamma`` (inter-arrival
times Gamma(burstiness, 1 / (rate · burstiness)), vLLM's benchmark) and ``trace`` (replay of a JSONL or CSV file
of ``timestamp`` in ms, ``input_length`` and ``output_length``, the Mooncake-trace columns vLLM's benchmark
reads). Random draws come from their own stream of the scenario's seed, so arrivals never shift the per-request
acceptance and jitter streams.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spdsim.errors import SpdsimError
from spdsim.scenario.config import Scenario, Workload

TRACE_COLUMNS = ("timestamp", "input_length", "output_length")
_ARRIVAL_STREAM = 1 << 30  # spawn key of the arrival stream, beyond any per-request child


@dataclass(frozen=True)
class RequestSpec:
    """One request: scheduled arrival (ns from the start of the run) and its lengths."""

    index: int
    arrival_ns: int
    prompt_tokens: int
    new_tokens: int


def build_requests(scenario: Scenario) -> tuple[RequestSpec, ...]:
    """Every request of ``scenario`` in arrival order (same scenario, same requests)."""
    workload = scenario.workload
    rng = np.random.default_rng(np.random.SeedSequence(scenario.seed, spawn_key=(_ARRIVAL_STREAM,)))
    kind = workload.arrival_kind
    if kind == "trace":
        return read_trace(workload.trace_path)
    count = workload.num_requests
    if workload.lengths:
        prompts, answers = dataset_lengths(rng, workload.lengths, count)
    else:
        prompts = _lengths(rng, workload.prompt_tokens, workload.length_range_ratio, count, low=0)
    if workload.lengths.startswith("answers:"):
        outputs = answers
    else:
        outputs = _lengths(rng, workload.new_tokens, workload.length_range_ratio, count, low=1)
    if kind in ("poisson", "gamma"):
        shape = workload.burstiness
        gaps_s = rng.gamma(shape, 1.0 / (workload.arrival_rate * shape), size=count)
        gaps_s[0] = 0.0  # the first request opens the run
        arrivals = np.rint(np.cumsum(gaps_s) * 1e9).astype(np.int64).tolist()
    else:
        arrivals = [0] * count
    return tuple(RequestSpec(i, arrivals[i], prompts[i], outputs[i]) for i in range(count))


def concurrency_limit(workload: Workload) -> int:
    """Requests in flight at most (0: unlimited); the sequential workload is one at a time."""
    if workload.arrival_kind == "sequential":
        return 1
    return workload.max_concurrency


@functools.cache  # embedded package data: read once per process
def prompt_table() -> dict:
    """The committed token counts of the prompt files (``spdsim/profiles/prompts/prompt_lengths.json``: its
    ``source`` and ``tokenizer`` fields say where they come from and how they were counted)."""
    from spdsim.scenario.presets import profiles_root

    return json.loads((profiles_root() / "prompts" / "prompt_lengths.json").read_text(encoding="utf-8"))


def dataset_lengths(rng: np.random.Generator, lengths: str, count: int) -> tuple[list[int], list[int]]:
    """Prompt and reference-answer lengths of ``count`` prompts of a dataset (``lengths`` = "<source>:<name>"):
    the dataset shuffled once and taken in turn, reshuffled each time it runs out (vLLM samples a dataset's
    prompts without replacement as far as it can). Answers are [] where the dataset has none."""
    entry = prompt_table()["datasets"][lengths.partition(":")[2]]
    size = len(entry["prompt_tokens"])
    order = np.concatenate([rng.permutation(size) for _ in range(-(-count // size))])[:count].tolist()
    answers = entry["answer_tokens"]
    return [entry["prompt_tokens"][i] for i in order], ([answers[i] for i in order] if answers else [])


def _lengths(rng: np.random.Generator, mean: int, ratio: float, count: int, low: int) -> list[int]:
    """``count`` lengths: all ``mean``, or uniform integers in [mean(1-r), mean(1+r)] (vLLM's random dataset)."""
    if ratio <= 0:
        return [mean] * count
    lo = max(low, math.floor(mean * (1 - ratio)))
    hi = max(lo, math.ceil(mean * (1 + ratio)))
    return rng.integers(lo, hi + 1, size=count).tolist()


def read_trace(path: str | Path) -> tuple[RequestSpec, ...]:
    """Requests replayed from a JSONL (one object a line) or CSV (header row) file; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise SpdsimError(f"workload.trace_path: no such file '{path}'")
    text = path.read_text(encoding="utf-8")
    rows: list[dict] = []
    if path.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    elif path.suffix in (".jsonl", ".json"):
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise SpdsimError(f"workload.trace_path: '{path}' line {number} is not JSON") from None
    else:
        raise SpdsimError(f"workload.trace_path: '{path}' must end in .jsonl or .csv")
    if not rows:
        raise SpdsimError(f"workload.trace_path: '{path}' holds no request")
    requests = []
    previous = 0
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise SpdsimError(f"workload.trace_path: '{path}' row {number} is not an object")
        missing = [c for c in TRACE_COLUMNS if c not in row]
        if missing:
            raise SpdsimError(f"workload.trace_path: '{path}' row {number} lacks {', '.join(missing)}")
        try:
            arrival_ns = round(float(row["timestamp"]) * 1e6)
            prompt, output = int(row["input_length"]), int(row["output_length"])
        except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite timestamp
            raise SpdsimError(f"workload.trace_path: '{path}' row {number} has a non-numeric field") from None
        if arrival_ns < previous or prompt < 0 or output < 1:
            raise SpdsimError(
                f"workload.trace_path: '{path}' row {number}: timestamps must not decrease, "
                "input_length >= 0, output_length >= 1"
            )
        previous = arrival_ns
        requests.append(RequestSpec(number - 1, arrival_ns, prompt, output))
    return tuple(requests)
