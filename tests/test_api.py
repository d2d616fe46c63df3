"""The public Python API: spdsim.simulate / compare / sweep, and scenarios checked where they are built."""

from __future__ import annotations

import subprocess
import sys

import pytest

import spdsim
from spdsim.contract.rundir import require_measured, require_scenario

ONE = {"workload.num_requests": 1, "workload.new_tokens": 32}


def test_simulate_the_default_returns_a_summary_frame():
    result = spdsim.simulate(overrides=ONE, methods=["ar", "spd-n8-l3"])  # methods or labels
    frame = result.summary
    assert list(frame["label"]) == ["ar", "ar-tp8", "spd-n8-l3"]
    assert frame.loc[0, "speedup"] == pytest.approx(1.0)
    assert (frame["tokens_per_s"] > 0).all()
    assert "closed_form.tokens_per_s" in frame.columns
    assert set(result.scenarios) == {"ar", "ar-tp8", "spd-n8-l3"}


def test_simulate_takes_a_path_a_dict_or_dataclasses():
    from spdsim.scenario.files import default_scenario_path, read_scenario_file

    path = default_scenario_path()
    by_path = spdsim.simulate(str(path), ONE, methods=["spd-n8-l3"]).summary
    by_dict = spdsim.simulate(read_scenario_file(path), ONE, methods=["spd-n8-l3"]).summary
    assert by_path["tokens_per_s"].tolist() == by_dict["tokens_per_s"].tolist()
    scenario = spdsim.simulate(str(path), ONE, methods=["spd-n8-l3"]).scenarios["spd-n8-l3"]
    again = spdsim.simulate(scenario).summary
    assert again["tokens_per_s"].tolist() == by_path["tokens_per_s"].tolist()
    assert scenario.method.name == "spd"


def test_compare_and_sweep_return_frames():
    table = spdsim.compare(["ar", "eagle3"], overrides=ONE)
    assert "ar" in set(table["label"])
    frame = spdsim.sweep(grid={"method.num_stages": [2, 4]}, overrides={**ONE, "method.name": "spd"})
    assert len(frame) > 0 and set(frame["method.num_stages"]) == {2, 4}


def test_a_scenario_built_in_python_is_checked():
    with pytest.raises(spdsim.SpdsimError, match=r"^acceptance.alpha: must be in \[0, 1\] \(got 1.7\)$"):
        spdsim.Scenario(acceptance=spdsim.AcceptanceSpec(alpha=1.7))
    with pytest.raises(spdsim.SpdsimError, match="workload.new_tokens"):
        spdsim.Workload(new_tokens=0)
    with pytest.raises(spdsim.SpdsimError, match="acceptance.alpha"):
        spdsim.simulate(overrides={"acceptance.alpha": 1.7})


def test_the_readme_one_liner():
    done = subprocess.run(
        [sys.executable, "-c", "import spdsim; print(spdsim.simulate().summary[['label', 'speedup']])"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "spd-n8-l3" in done.stdout


def test_run_directories_of_the_other_kind_are_refused_in_one_line(tmp_path):
    measured = tmp_path / "measured"
    measured.mkdir()
    for name in ("config.json", "tokens.csv", "cycles.csv", "trace.csv"):
        (measured / name).write_text("{}")
    simulated = tmp_path / "simulated"
    simulated.mkdir()
    for name in ("config.json", "tokens.csv", "trace.json"):
        (simulated / name).write_text("{}")
    with pytest.raises(
        spdsim.SpdsimError, match=r"is a measured run \(cycles.csv, trace.csv\): it has no scenario"
    ) as info:
        require_scenario(measured)
    assert "\n" not in str(info.value)
    with pytest.raises(spdsim.SpdsimError, match=r"missing cycles.csv \(a simulated run") as info:
        require_measured(simulated)
    assert "\n" not in str(info.value)
    assert require_scenario(simulated) == simulated / "config.json"
    assert require_measured(measured) == measured


def test_the_readme_python_block_runs_as_written(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    from test_readme import MY_SCENARIO

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (tmp_path / "my_scenario.toml").write_text(MY_SCENARIO)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})


def test_negative_trace_requests_are_refused_before_simulating():
    for bad in (-1, [0, -2]):
        with pytest.raises(spdsim.SpdsimError, match="none negative"):
            spdsim.simulate(overrides=ONE, trace_requests=bad)
