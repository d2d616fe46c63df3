"""Run directories: atomic writes, deterministic names and contents, trace and CSV faithful to the Result."""

from __future__ import annotations

import json

import pytest

from spdsim.contract.files import write_atomically
from spdsim.engine.metrics import summarize
from spdsim.engine.run import simulate
from spdsim.errors import SpdsimError
from spdsim.report import rundir as artifacts
from spdsim.report.compare import simulate_runs
from spdsim.report.rundir import (
    chrome_trace,
    config_document,
    default_run_dir,
    run_config_path,
    tokens_csv,
    write_run_dir,
)
from spdsim.scenario.files import load_runs

SMALL = ["workload.new_tokens=40", "workload.num_requests=2"]


@pytest.fixture(scope="module")
def outcomes():
    return simulate_runs(load_runs(methods=["ar", "spd", "eagle3-k3"], overrides=SMALL))


def test_tokens_csv_has_every_commit_in_microseconds(outcomes):
    lines = tokens_csv(outcomes).splitlines()
    assert lines[0] == "method,request,index,commit_time_us,iteration,from_draft"
    assert len(lines) - 1 == sum(len(o.result.tokens) for o in outcomes)
    spd = next(o for o in outcomes if o.label == "spd-n8-l3")
    rows = [line.split(",") for line in lines[1:] if line.startswith("spd-n8-l3,")]
    for row, token in zip(rows, spd.result.tokens, strict=True):
        assert int(row[1]) == token.request and int(row[2]) == token.index
        assert float(row[3]) == pytest.approx(token.commit_ns / 1000, abs=5e-4)
        assert int(row[5]) == int(token.from_draft)


def test_chrome_trace_is_one_pid_per_run_one_tid_per_resource(outcomes):
    trace = json.loads(chrome_trace(outcomes))
    events = trace["traceEvents"]
    processes = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert list(processes.values()) == [o.label for o in outcomes]
    for pid, outcome in enumerate(outcomes, start=1):
        threads = {
            e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name" and e["pid"] == pid
        }
        expected = outcome.traced.intervals
        assert set(threads.values()) == {iv.resource for iv in expected}
        spans = [e for e in events if e["ph"] == "X" and e["pid"] == pid]
        assert len(spans) == len(expected)
        for span, iv in zip(spans, expected, strict=True):
            assert threads[span["tid"]] == iv.resource and span["cat"] == iv.kind
            assert span["ts"] == pytest.approx(iv.start_ns / 1000, abs=5e-4)
            assert span["dur"] == pytest.approx((iv.end_ns - iv.start_ns) / 1000, abs=5e-4)


def test_traced_first_request_is_request_0_of_the_full_run(outcomes):
    for outcome in outcomes:
        full = simulate(outcome.scenario, record_intervals=True)
        assert outcome.traced.intervals == tuple(iv for iv in full.intervals if iv.request == 0)
        assert outcome.result.tokens == full.tokens
        assert summarize(outcome.result)["bubble_fraction"] == pytest.approx(
            summarize(full)["bubble_fraction"]
        )


def test_trace_spans_never_overlap_on_one_resource(outcomes):
    events = [e for e in json.loads(chrome_trace(outcomes))["traceEvents"] if e["ph"] == "X"]
    by_thread: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for e in events:
        by_thread.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_thread.values():
        spans.sort()
        assert all(
            a_end <= b_start + 1e-3 for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)
        )


def test_run_directory_round_trips_and_is_named_by_content(outcomes, tmp_path):
    runs = load_runs(methods=["ar", "spd", "eagle3-k3"], overrides=SMALL)
    assert default_run_dir(runs, "default") == default_run_dir(runs, "default")
    other = load_runs(methods=["ar", "spd", "eagle3-k3"], overrides=[*SMALL, "seed=1"])
    assert default_run_dir(runs, "default") != default_run_dir(other, "default")
    out = write_run_dir(tmp_path / "run", outcomes, "default")
    assert json.loads((out / "config.json").read_text()) == json.loads(
        json.dumps(config_document(runs, "default"))
    )
    assert load_runs([run_config_path(out)]) == runs
    summary = json.loads((out / "summary.json").read_text())
    assert [row["label"] for row in summary["runs"]] == [o.label for o in outcomes]


def test_a_failing_writer_leaves_nothing_behind(tmp_path):
    def explode():
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(tmp_path / "run", {"a.txt": lambda: "a", "b.txt": explode})
    assert list(tmp_path.iterdir()) == []


def test_rewriting_replaces_the_whole_directory(tmp_path):
    write_atomically(tmp_path / "run", {"old.txt": lambda: "old"})
    write_atomically(tmp_path / "run", {"new.txt": lambda: "new"})
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".spdsim", "new.txt"]


def test_failure_in_a_real_run_write_keeps_the_previous_run(outcomes, tmp_path, monkeypatch):
    write_run_dir(tmp_path / "run", outcomes, "default")
    before = (tmp_path / "run" / "summary.json").read_bytes()
    monkeypatch.setattr(artifacts, "chrome_trace", lambda _: (_ for _ in ()).throw(OSError("no space")))
    with pytest.raises(OSError):
        write_run_dir(tmp_path / "run", outcomes, "default")
    assert (tmp_path / "run" / "summary.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_bad_targets(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpdsimError, match="exists and is not a directory"):
        write_atomically(tmp_path / "file", {"a": lambda: "a"})
    with pytest.raises(SpdsimError, match="has no config.json"):
        run_config_path(tmp_path)
    with pytest.raises(SpdsimError, match="no such run directory"):
        run_config_path(tmp_path / "absent")
