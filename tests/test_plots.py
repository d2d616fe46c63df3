"""Timeline Gantt chart and line plots: windows, clipping, run selection, files written."""

from __future__ import annotations

import pandas as pd
import pytest

from spdsim.engine.result import BUSY, FLUSHED
from spdsim.engine.run import simulate
from spdsim.errors import SpdsimError
from spdsim.report.plots import (
    parse_window_ms,
    pick_run,
    plot_lines,
    plot_timeline,
    resource_order,
    timeline_spans,
    timeline_window_ns,
)
from spdsim.scenario.files import load_runs


@pytest.fixture(scope="module")
def spd_result():
    (run,) = load_runs(methods=["spd-n8-l3"], overrides=["workload.new_tokens=64", "workload.num_requests=1"])
    return simulate(run.scenario)


@pytest.mark.parametrize(("text", "window"), [(None, None), ("5", (0.0, 5.0)), ("1.5:4", (1.5, 4.0))])
def test_parse_window(text, window):
    assert parse_window_ms(text) == window


@pytest.mark.parametrize("text", ["abc", "5:2", "-1:3", "1:2:3"])
def test_parse_window_rejects(text):
    with pytest.raises(SpdsimError, match="--window-ms"):
        parse_window_ms(text)


def test_pick_run_defaults_to_the_first_pipeline():
    runs = load_runs()
    assert pick_run(runs, None).label == "spd-n8-l3"
    assert pick_run(runs, "eagle3-k7").label == "eagle3-k7"
    assert pick_run(runs, "ppsd").label == "ppsd-n8"
    with pytest.raises(SpdsimError, match="no run labelled or of method 'medusa'"):
        pick_run(runs, "medusa")


def test_resources_sort_controller_drafter_then_stages_numerically():
    names = ["stage10", "stage2", "drafter", "controller", "stage0"]
    assert sorted(names, key=resource_order) == ["controller", "drafter", "stage0", "stage2", "stage10"]


def test_spans_are_clipped_to_the_window_and_keep_busy_time(spd_result):
    start_ns, end_ns = timeline_window_ns(spd_result, (1.0, 3.0))
    assert end_ns - start_ns == 2_000_000
    spans = timeline_spans(spd_result, start_ns, end_ns)
    assert list(spans)[:2] == ["controller", "drafter"] and "stage7" in spans
    for resource, kinds in spans.items():
        clipped = sum(width for runs in kinds.values() for _, width in runs)
        expected = sum(
            max(0, min(iv.end_ns, end_ns) - max(iv.start_ns, start_ns))
            for iv in spd_result.intervals
            if iv.resource == resource
        )
        assert clipped == expected <= end_ns - start_ns
        assert all(start_ns <= b and b + w <= end_ns for runs in kinds.values() for b, w in runs)
    assert any(spans[r][FLUSHED] for r in spans) and any(spans[r][BUSY] for r in spans)


def test_default_window_covers_the_first_iterations(spd_result):
    start_ns, end_ns = timeline_window_ns(spd_result, None)
    assert start_ns == spd_result.request_start_ns[0]
    first = [iv for iv in spd_result.intervals if iv.iteration < 30]
    assert end_ns == max(iv.end_ns for iv in first)


def test_plot_timeline_writes_png_and_svg(spd_result, tmp_path):
    png = plot_timeline(spd_result, tmp_path / "t.png", title="spd")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000
    svg = plot_timeline(spd_result, tmp_path / "t.svg", window_ms=(0.0, 2.0))
    assert "flushed (discarded)" in svg.read_text() and "bubble (idle)" in svg.read_text()


def test_plot_timeline_needs_intervals(tmp_path):
    run = load_runs(methods=["ar"], overrides=["workload.new_tokens=4", "workload.num_requests=1"])[0]
    with pytest.raises(SpdsimError, match="no busy intervals"):
        plot_timeline(simulate(run.scenario, record_intervals=False), tmp_path / "t.png")


def test_plot_lines(tmp_path):
    frame = pd.DataFrame(
        {"n": [2, 4, 2, 4], "speedup": [1.5, 2.5, 1.2, 1.9], "variant": ["a", "a", "b", "b"]}
    )
    out = plot_lines(frame, "n", "speedup", "variant", tmp_path / "s.svg", title="t")
    assert out.read_text().count("<path") > 4
