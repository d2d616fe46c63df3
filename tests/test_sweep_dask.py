"""The same sweep on a Dask cluster gives the same table as the local process pool (issue 7, item 2)."""

from __future__ import annotations

import pytest

from spdsim.cli import app
from spdsim.drivers.sweep import run_sweep
from spdsim.errors import SpdsimError

distributed = pytest.importorskip("distributed")

SCENARIO = """
name = "dask-sweep"
seed = 3
model = "qwen3.5-4b"
hardware = "h100"
[method]
name = "spd"
num_stages = 4
spec_layers = 1
[acceptance]
kind = "iid"
alpha = 0.8
[overheads]
jitter_cv = 0.1
[workload]
new_tokens = 64
num_requests = 2
[[runs]]
label = "spd"
[[runs]]
label = "eagle3"
method = { name = "eagle3", draft_tokens = 3 }
"""
GRID = ["method.num_stages=2,4,8", "acceptance.alpha=0.6,0.9"]


@pytest.fixture(scope="module")
def cluster():
    # one in-process worker: light on a 2-core CI machine, yet every task goes through the scheduler
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as local:
        yield local


@pytest.fixture()
def scenario_file(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(SCENARIO)
    return path


def test_dask_sweep_equals_local_sweep(cluster, scenario_file):
    local = run_sweep(scenario_file, GRID, workers=1)
    remote = run_sweep(scenario_file, GRID, scheduler=cluster.scheduler_address)
    assert len(remote) == 12  # 3 x 2 points x 2 runs
    assert remote.equals(local)  # same rows, same order, bit-identical floats (jitter is seeded)
    spd = remote[remote["label"] == "spd"]
    assert spd["tokens_per_s"].nunique() == 6  # every SPD point simulated, not one row repeated


def test_cli_sweep_with_scheduler_writes_the_local_table(cluster, scenario_file, tmp_path):
    from typer.testing import CliRunner

    runner = CliRunner()
    on_dask, local = tmp_path / "dask.csv", tmp_path / "local.csv"
    grid = ["--grid", GRID[0], "--grid", GRID[1]]
    result = runner.invoke(
        app,
        ["sweep", str(scenario_file), *grid, "--out", str(on_dask), "--scheduler", cluster.scheduler_address],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["sweep", str(scenario_file), *grid, "--out", str(local), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert on_dask.read_bytes() == local.read_bytes()


def test_unreachable_scheduler_is_a_one_line_error():
    from spdsim.drivers.dask_backend import run_chunks_on_dask

    with pytest.raises(
        SpdsimError, match="--scheduler: cannot reach a Dask scheduler at 'tcp://127.0.0.1:9'"
    ):
        run_chunks_on_dask("tcp://127.0.0.1:9", len, [[]], lambda n: None, connect_timeout_s=1.0)
