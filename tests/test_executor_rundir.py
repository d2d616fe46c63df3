"""Executor run directory: the six files, atomic replacement, a trace that spdsim's replay reads as is, and the
measured Chrome trace (timeline.json)."""

import csv
import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
from executor_tiny import prompts, tiny_model

from executor.fastmodel import FastModel
from executor.models import load_model
from executor.rundir import RUN_FILES, TOKEN_COLUMNS, timeline_json, write_run_dir, write_trace
from executor.schedules import run_method
from executor.schedules.common import CycleTiming, PromptRun, RunResult
from spdsim.calibration.measured_runs import load_run
from spdsim.contract.files import MARKER, own_files
from spdsim.contract.rundir import MEASURED_FILES, MEASURED_REQUIRED, require_measured
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


@pytest.fixture(scope="module")
def tiny_qwen3_spd():
    """SPD n = 2 on the CPU with random:tiny-qwen3, two prompts, a few tokens."""
    fast = FastModel.from_hf(load_model("random:tiny-qwen3", seed=1).hf_model, max_seq_len=256)
    return run_method(
        "spd", fast, prompts(2, vocab=fast.cfg.vocab_size), max_new_tokens=10, stages=2, synthetic_alpha=0.7
    )


def _timeline(out):
    trace = json.loads((out / "timeline.json").read_text())
    assert trace["displayTimeUnit"] == "ms"
    events = trace["traceEvents"]
    processes = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    spans = [e for e in events if e["ph"] == "X"]
    assert all(e["ph"] in ("M", "X") for e in events)
    return processes, threads, spans


def test_timeline_of_a_cpu_spd_run_is_its_measured_phases(tmp_path, tiny_qwen3_spd):
    result = tiny_qwen3_spd
    out = write_run_dir(result, tmp_path / "run")
    processes, threads, spans = _timeline(out)
    assert processes == {request + 1: run.prompt_id for request, run in enumerate(result.prompts)}
    cycles = read_csv(out / "cycles.csv")
    phases = [c[: -len("_us")] for c in cycles[0] if c.endswith("_us")]
    assert {"draft", "stage0", "stage1", "verify"} <= set(phases)
    for pid in processes:  # one thread per phase that cycles.csv shows for the prompt, named after it
        seen = {p for row in cycles if int(row["request"]) == pid - 1 for p in phases if row[f"{p}_us"]}
        assert sorted(name for (p, _), name in threads.items() if p == pid) == sorted(seen)
    rows = {(int(r["request"]) + 1, int(r["cycle"])): r for r in cycles}
    counts: dict[tuple, int] = {}
    for span in spans:
        key = (span["pid"], span["args"]["cycle"], span["name"])
        counts[key] = counts.get(key, 0) + 1
    assert spans and all(n == 1 for n in counts.values())  # the CPU schedule times each phase once a cycle
    for span in spans:
        row = rows[span["pid"], span["args"]["cycle"]]
        assert threads[span["pid"], span["tid"]] == span["name"]
        assert span["args"]["state"] == row["state"]
        assert span["dur"] == pytest.approx(float(row[f"{span['name']}_us"]), abs=1e-3)
        assert span["ts"] >= 0
    assert len(spans) == sum(1 for row in cycles for p in phases if row[f"{p}_us"])  # every phase time, once
    for pid in processes:
        own = [s for s in spans if s["pid"] == pid]
        assert min(s["ts"] for s in own) == 0.0  # from the prompt's first phase
        by_cycle = sorted(own, key=lambda s: (s["args"]["cycle"], s["ts"]))
        assert [s["ts"] for s in by_cycle] == sorted(s["ts"] for s in own)  # starts follow the cycles
        for tid in {s["tid"] for s in own}:  # one thread's spans never overlap on the CPU (serial phases)
            track = sorted((s for s in own if s["tid"] == tid), key=lambda s: s["ts"])
            for before, after in zip(track, track[1:], strict=False):
                assert before["ts"] + before["dur"] <= after["ts"] + 1e-3
    again = write_run_dir(result, tmp_path / "again")
    assert (again / "timeline.json").read_bytes() == (out / "timeline.json").read_bytes()


def test_timeline_of_an_ar_run_has_one_step_track(tmp_path, model):
    result = run_method("ar", model, prompts(2), max_new_tokens=6)
    _, threads, spans = _timeline(write_run_dir(result, tmp_path / "run"))
    assert set(threads.values()) == {"step"}
    for request, run in enumerate(result.prompts):
        own = [s for s in spans if s["pid"] == request + 1]
        assert [s["args"]["cycle"] for s in own] == [c.index for c in run.cycles]
        assert [s["dur"] for s in own] == pytest.approx([c.phases_us["step"] for c in run.cycles], abs=1e-3)
        assert own[0]["ts"] == 0.0 and all(
            a["ts"] + a["dur"] <= b["ts"] + 1e-3 for a, b in zip(own, own[1:], strict=False)
        )


def _prompt_run(prompt_id, cycles, spans):
    return PromptRun(prompt_id, 3, (1,), (0.0,), (-1,), (False,), cycles, (), 0, 0, phase_spans=spans)


def test_timeline_builder_on_a_hand_made_result():
    cycles = (CycleTiming(0, "fill", 0, {}), CycleTiming(1, "saturated", 1, {}))
    spans = (
        (0, "stage10", 0.0, 1.0),
        (0, "stage2", 0.0, 2.0),
        (0, "draft", 0.5, 1.0),
        (1, "verify", 3.0, 0.25),
        (1, "verify", 3.5, 0.25),  # timed twice in a cycle: two spans
        (2, "host", 4.0, 1.0),  # a cycle the result has no state for
    )
    result = RunResult("spd", {}, (_prompt_run("a", cycles, spans), _prompt_run("b", (), ())), "cpu")
    text = timeline_json(result)
    assert text == timeline_json(result) and text.endswith("]}\n")
    events = json.loads(text)["traceEvents"]
    meta = [(e["name"], e["pid"], e["tid"], e["args"]) for e in events if e["ph"] == "M"]
    tracks = [(5, "host"), (1, "draft"), (2, "stage2"), (3, "stage10"), (4, "verify")]
    assert meta == [
        ("process_name", 1, 0, {"name": "a"}),
        ("process_sort_index", 1, 0, {"sort_index": 1}),
        *[
            item
            for tid, name in sorted(tracks)
            for item in (
                ("thread_name", 1, tid, {"name": name}),
                ("thread_sort_index", 1, tid, {"sort_index": tid}),
            )
        ],
        ("process_name", 2, 0, {"name": "b"}),  # no spans: the process and nothing else
        ("process_sort_index", 2, 0, {"sort_index": 2}),
    ]
    spans_out = [(e["name"], e["ts"], e["dur"], e["tid"], e["args"]) for e in events if e["ph"] == "X"]
    assert spans_out == [
        ("stage2", 0.0, 2.0, 2, {"cycle": 0, "state": "fill"}),
        ("stage10", 0.0, 1.0, 3, {"cycle": 0, "state": "fill"}),
        ("draft", 0.5, 1.0, 1, {"cycle": 0, "state": "fill"}),
        ("verify", 3.0, 0.25, 4, {"cycle": 1, "state": "saturated"}),
        ("verify", 3.5, 0.25, 4, {"cycle": 1, "state": "saturated"}),
        ("host", 4.0, 1.0, 5, {"cycle": 2, "state": None}),
    ]
    empty = json.loads(timeline_json(RunResult("ar", {}, (), "cpu")))
    assert empty == {"displayTimeUnit": "ms", "traceEvents": []}


def test_a_result_without_spans_still_writes_a_valid_timeline(tmp_path, spd_result):
    """A result made before spans were kept (or any path that keeps none): the processes, no threads or spans."""
    old = RunResult(
        spd_result.method,
        spd_result.config,
        tuple(dataclasses.replace(run, phase_spans=()) for run in spd_result.prompts),
        spd_result.device,
    )
    processes, threads, spans = _timeline(write_run_dir(old, tmp_path / "run"))
    assert len(processes) == len(spd_result.prompts) and not threads and not spans


def test_a_measured_run_from_before_the_timeline_still_loads_and_is_rewritten_with_it(tmp_path, spd_result):
    committed = Path(__file__).resolve().parents[1] / "studies" / "fidelity" / "results" / "dist_spd_n2_a0.60"
    assert not (committed / "timeline.json").exists()
    assert require_measured(committed) == committed and load_run(committed).prompts
    assert "timeline.json" in MEASURED_FILES and "timeline.json" not in MEASURED_REQUIRED
    out = write_run_dir(spd_result, tmp_path / "run")
    older = [name for name in RUN_FILES if name != "timeline.json"]
    for marker in (False, True):  # written before the marker existed, and by the writer of five files
        (out / "timeline.json").unlink()
        (out / MARKER).unlink()
        if marker:
            (out / MARKER).write_text(json.dumps({"written_by": "spdsim", "files": sorted(older)}) + "\n")
        assert require_measured(out) == out and load_run(out).prompts
        assert own_files(out) is not None  # still spdsim's own: --force may rewrite it
        write_run_dir(spd_result, out, force=True)
        assert sorted(p.name for p in out.iterdir()) == sorted([*RUN_FILES, MARKER])
