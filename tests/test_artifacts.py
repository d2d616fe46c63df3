"""Run directories: atomic writes, deterministic names and contents, trace and CSV faithful to the Result."""

from __future__ import annotations

import gzip
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


SERVING = [
    "workload.new_tokens=30",
    "workload.num_requests=10",
    "workload.arrival_rate=80",
    "workload.max_batch=4",
    "workload.prefill_ns=200000",
]


@pytest.fixture(scope="module")
def served():
    return simulate_runs(load_runs(methods=["spd", "eagle3-k3"], overrides=SERVING))


def _request_view(trace: dict, pid: int) -> tuple[dict[int, list[dict]], dict[int, list[dict]]]:
    """Per request: the resource spans that carry it, and the spans of its own track."""
    events = trace["traceEvents"]
    threads = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name" and e["pid"] == pid}
    carried: dict[int, list[dict]] = {}
    own: dict[int, list[dict]] = {}
    for e in events:
        if e["ph"] != "X" or e["pid"] != pid:
            continue
        if threads[e["tid"]].startswith("request "):
            own.setdefault(int(threads[e["tid"]].split()[1]), []).append(e)
        else:
            args = e["args"]
            for request in args.get("requests", [args.get("request")]):
                carried.setdefault(request, []).append(e)
    return carried, own


def test_serving_trace_holds_every_request_and_labels_batched_steps(served):
    trace = json.loads(chrome_trace(served))
    for pid, outcome in enumerate(served, start=1):
        carried, own = _request_view(trace, pid)
        assert -1 not in carried  # every batched span names the requests it serves
        tokens = outcome.result.tokens
        for request in range(10):
            commits = [t.commit_ns for t in tokens if t.request == request]
            steps = {e["args"]["step"] for e in carried[request]}
            assert len(steps) >= len(commits) // (4 if outcome.label.startswith("eagle") else 1)
            # the busy spans of the steps serving it end by its last token, and its track spans sent..last token
            assert max(e["ts"] + e["dur"] for e in carried[request]) == pytest.approx(
                max(commits) / 1000, abs=2e-3
            )
            decode = next(e for e in own[request] if e["name"] == "decode")
            assert decode["args"]["tokens"] == 30
            assert decode["ts"] + decode["dur"] == pytest.approx(max(commits) / 1000, abs=2e-3)
            waits = [e for e in own[request] if e["name"] == "wait + prefill"]
            sent = outcome.result.request_sent_ns[request]
            assert waits and waits[0]["ts"] == pytest.approx(sent / 1000, abs=2e-3)


def test_serving_trace_of_chosen_requests():
    runs = load_runs(methods=["spd"], overrides=SERVING)[:1]
    (outcome,) = simulate_runs(runs, trace_requests=(2, 5))
    carried, own = _request_view(json.loads(chrome_trace([outcome])), 1)
    assert sorted(own) == [2, 5]
    spans = {id(e): e for spans in carried.values() for e in spans}.values()
    assert all({2, 5} & set(e["args"]["requests"]) for e in spans)
    with pytest.raises(SpdsimError, match="trace-requests"):
        simulate_runs(runs, trace_requests=(10,))
    for chosen in (0, ()):
        for scenario_runs in (runs, load_runs(methods=["ar"], overrides=SMALL)):
            assert simulate_runs(scenario_runs, trace_requests=chosen)[0].traced is None


def test_serving_trace_is_gzipped_and_reproducible(served, tmp_path):
    out = write_run_dir(tmp_path / "run", served, "served")
    assert not (out / "trace.json").exists()
    data = (out / "trace.json.gz").read_bytes()
    assert json.loads(gzip.decompress(data)) == json.loads(chrome_trace(served))
    again = write_run_dir(tmp_path / "again", served, "served")
    assert (again / "trace.json.gz").read_bytes() == data


def test_large_trace_is_gzipped(outcomes, tmp_path, monkeypatch):
    assert (write_run_dir(tmp_path / "small", outcomes, "default") / "trace.json").is_file()
    monkeypatch.setattr(artifacts, "GZIP_ABOVE", len(chrome_trace(outcomes)) - 1)
    out = write_run_dir(tmp_path / "small", outcomes, "default")  # rewritten: the stale trace.json goes
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".spdsim", "config.json", "summary.json", "tokens.csv", "trace.json.gz"]
    )
    with gzip.open(out / "trace.json.gz", "rt") as handle:
        assert json.load(handle) == json.loads(chrome_trace(outcomes))


def test_closed_form_of_a_serving_run_is_labelled_one_request(outcomes, served):
    for outcome in served:
        assert outcome.summary["closed_form"]["scope"].startswith("one request")
    for outcome in outcomes:
        assert "scope" not in outcome.summary["closed_form"]
