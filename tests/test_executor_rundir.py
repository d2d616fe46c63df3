"""Executor run directory: the five files, atomic replacement, and a trace that spdsim's replay reads as is."""

import csv
import json

import pandas as pd
import pytest
from executor_tiny import prompts, tiny_model

from executor.rundir import RUN_FILES, TOKEN_COLUMNS, write_run_dir, write_trace
from executor.schedules import run_method
from spdsim.errors import SpdsimError
from spdsim.scenario.acceptance import TRACE_COLUMNS, load_trace


@pytest.fixture(scope="module")
def model():
    return tiny_model(layers=4)


@pytest.fixture(scope="module")
def spd_result(model):
    return run_method("spd", model, prompts(4), max_new_tokens=12, stages=2, synthetic_alpha=0.7)


@pytest.fixture(scope="module")
def chain_result(model):
    return run_method("eagle3", model, prompts(4), max_new_tokens=12, k=3, synthetic_alpha=0.6)


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_run_directory_files_agree_with_the_result(tmp_path, spd_result):
    out = write_run_dir(spd_result, tmp_path / "run")
    assert sorted(p.name for p in out.iterdir()) == sorted([*RUN_FILES, ".spdsim"])
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "spd" and config["stages"] == 2 and config["synthetic_alpha"] == 0.7
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tokens_per_cycle"] == pytest.approx(spd_result.tokens_per_cycle)
    assert summary["equivalent_acceptance_length"] == pytest.approx(2 * spd_result.tokens_per_cycle)
    assert {"draft", "stage0", "stage1", "verify"} <= set(summary["phase_median_us"])
    tokens = read_csv(out / "tokens.csv")
    assert tuple(tokens[0]) == TOKEN_COLUMNS
    assert [int(r["token"]) for r in tokens if r["request"] == "0"] == list(spd_result.prompts[0].tokens)
    times = [float(r["commit_time_us"]) for r in tokens if r["request"] == "0"]
    assert times == sorted(times)
    drafted = sum(int(r["from_draft"]) for r in tokens)
    assert drafted == sum(p.accepted for p in spd_result.prompts)  # SPD: each accepted draft is one token
    cycles = read_csv(out / "cycles.csv")
    assert len(cycles) == sum(p.decode_steps for p in spd_result.prompts)
    assert {r["state"] for r in cycles} <= {"fill", "refill", "saturated"}


@pytest.mark.parametrize("which", ["spd_result", "chain_result"])
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_trace_loads_in_the_simulator_replay(tmp_path, request, which, suffix):
    result = request.getfixturevalue(which)
    path = write_trace(result, tmp_path / f"trace{suffix}")
    frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    assert tuple(frame.columns) == TRACE_COLUMNS
    trace = load_trace(path)
    assert trace.kind == ("spd" if which == "spd_result" else "chain")
    assert trace.prompt_ids == tuple(p.prompt_id for p in result.prompts)
    for run, outcomes in zip(result.prompts, trace.outcomes, strict=True):
        assert len(outcomes) == run.verifications
        assert sum(outcomes) == run.accepted  # leading accepts per chain verification = accepted drafts
    if which == "chain_result":
        # Tokens per iteration = accepted drafts + 1 (except a last iteration cut at max_new_tokens).
        for run, outcomes in zip(result.prompts, trace.outcomes, strict=True):
            assert [c.tokens for c in run.cycles[:-1]] == [o + 1 for o in outcomes[:-1]]


def test_existing_directory_is_replaced_and_bad_trace_suffix_refused(tmp_path, spd_result, chain_result):
    write_run_dir(spd_result, tmp_path / "run")
    write_run_dir(chain_result, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["method"] == "eagle3"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    with pytest.raises(SpdsimError, match=r"\.csv or \.parquet"):
        write_trace(spd_result, tmp_path / "trace.json")
