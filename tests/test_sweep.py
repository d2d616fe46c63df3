"""Grid sweeps: parsing, order, validation before work, parallel == serial, speedup definition."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from spdsim.drivers.sweep import build_tasks, grid_points, parse_grid, sweep_tasks, write_table
from spdsim.errors import SpdsimError

CONSTANT = {
    "model": "qwen3.5-4b",
    "method": {"name": "spd", "num_stages": 4},
    "latency": {"kind": "constant", "layer_ns": 100_000},
    "workload": {"new_tokens": 400, "num_requests": 1},
}


@pytest.mark.parametrize(
    ("text", "key", "values"),
    [
        ("method.num_stages=2,4,8,16", "method.num_stages", [2, 4, 8, 16]),
        ("acceptance.alpha=0.5:0.95:10", "acceptance.alpha", [0.5 + 0.05 * i for i in range(10)]),
        ("acceptance.alpha=0.7:0.7:1", "acceptance.alpha", [0.7]),
        ("method.name=spd,eagle3", "method.name", ["spd", "eagle3"]),
        ("seed=3", "seed", [3]),
    ],
)
def test_parse_grid(text, key, values):
    parsed_key, parsed = parse_grid(text)
    assert parsed_key == key and parsed == pytest.approx(values) if key != "method.name" else parsed == values


@pytest.mark.parametrize("text", ["alpha", "=1,2", "a=", "a=1:2", "a=1:2:x", "a=0:1:0"])
def test_parse_grid_rejects(text):
    with pytest.raises(SpdsimError, match="--grid"):
        parse_grid(text)


def test_grid_points_last_axis_fastest():
    points = grid_points([("a", [1, 2]), ("b", ["x", "y", "z"])])
    assert [(p["a"], p["b"]) for p in points] == [(1, "x"), (1, "y"), (1, "z"), (2, "x"), (2, "y"), (2, "z")]


def test_every_point_is_validated_before_any_simulation():
    with pytest.raises(SpdsimError, match=r"acceptance.alpha: must be in \[0, 1\] \(got 1.5\)"):
        build_tasks(CONSTANT, ["acceptance.alpha=0.5,1.5"])
    with pytest.raises(SpdsimError, match="method.num_stages: 3 does not divide"):
        build_tasks(CONSTANT, ["method.num_stages=2,3"])


def test_parallel_sweep_equals_serial_and_follows_the_closed_form():
    tasks = build_tasks(CONSTANT, ["method.num_stages=2,4,8", "acceptance.alpha=0.6,0.9"])
    serial = sweep_tasks(tasks, workers=1)
    parallel = sweep_tasks(tasks, workers=2)
    pd.testing.assert_frame_equal(serial, parallel)
    assert list(serial["method.num_stages"]) == [2, 2, 4, 4, 8, 8]
    # ideal constant latency, no overheads: SPD speedup follows n / (1 + (n-1)(1-alpha)) up to fill and sampling
    n, alpha = serial["method.num_stages"], serial["acceptance.alpha"]
    ideal = n / (1 + (n - 1) * (1 - alpha))
    assert ((serial["speedup"] - ideal).abs() / ideal < 0.1).all()
    assert (serial["closed_form_tokens_per_s"] > 0).all()


def test_speedup_is_against_ar_on_the_same_setting():
    raw = {**CONSTANT, "runs": [{"label": "ar", "method": {"name": "ar"}}, {"label": "spd"}]}
    frame = sweep_tasks(build_tasks(raw, ["latency.layer_ns=100000,200000"]), workers=1)
    ar_rows = frame[frame["label"] == "ar"]
    assert ar_rows["speedup"].tolist() == pytest.approx([1.0, 1.0])
    spd = frame[frame["label"] == "spd"].reset_index(drop=True)
    ar = ar_rows.reset_index(drop=True)
    assert spd["speedup"].tolist() == pytest.approx((spd["tokens_per_s"] / ar["tokens_per_s"]).tolist())


def test_write_table_formats_and_rejects(tmp_path):
    frame = pd.DataFrame({"a": [1, 2]})
    write_table(frame, tmp_path / "t.csv")
    write_table(frame, tmp_path / "t.parquet")
    assert pd.read_parquet(tmp_path / "t.parquet").equals(pd.read_csv(tmp_path / "t.csv"))
    with pytest.raises(SpdsimError, match=r"must end in \.csv or \.parquet"):
        write_table(frame, tmp_path / "t.xlsx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.parquet"]


def test_ctrl_c_during_a_300_point_sweep_exits_130_within_2_s_and_writes_no_table(tmp_path):
    """SIGINT to the whole process group (what a terminal's Ctrl-C does), once the workers are simulating."""
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "s.toml").write_text(
        'model = "qwen3.5-4b"\nhardware = "h100"\n[method]\nname = "spd"\n'
        "[workload]\nnew_tokens = 2048\nnum_requests = 16\n"  # ~7 min of simulation: Ctrl-C lands mid-grid
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    argv = [sys.executable, "-m", "spdsim.cli", "sweep", "s.toml", "--grid", "acceptance.alpha=0.5:0.95:300"]
    process = subprocess.Popen(
        [*argv, "--workers", "2", "--out", "s.csv"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )
    time.sleep(6)  # imports, 300 validated points, workers started and busy
    assert process.poll() is None, process.communicate()
    sent = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=30)
    elapsed = time.monotonic() - sent
    assert process.returncode == 130, err
    assert elapsed < 2.0, f"took {elapsed:.2f} s to stop"
    assert err.strip().splitlines()[-1].startswith("interrupted"), err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]  # no CSV, no temporary file
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):  # the workers are gone too
        os.killpg(process.pid, 0)
