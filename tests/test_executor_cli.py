"""`spdsim exec` commands through typer's CliRunner on tiny models (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from executor.cli import app


def test_cli_module_does_not_import_torch() -> None:
    code = "import sys, executor.cli; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_run_ar_prints_summary() -> None:
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--model",
            "random:tiny-qwen3",
            "--prompts",
            "gsm8k",
            "--limit",
            "2",
            "--max-new-tokens",
            "6",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "tokens_per_s" in result.output


@pytest.mark.parametrize("flag", ["--progress", "--no-progress"])
def test_run_progress_bar_goes_to_stderr_and_the_summary_still_prints(flag: str) -> None:
    """The bar (one row for the run's prompts, one for the lossless check's AR reference) is on stderr only,
    finished before the summary table prints on stdout; --no-progress draws none."""
    args = ["run", "--model", "random:tiny-qwen3", "--method", "spd", "--stages", "2", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--limit", "2", "--max-new-tokens", "6", flag])
    assert result.exit_code == 0, result.output
    assert result.stdout.lstrip().startswith("spd on cpu")  # the table's title: nothing before it
    assert "tokens_per_s" in result.stdout and "lossless check vs greedy AR: 2/2" in result.stdout
    assert "timed prompts" not in result.stdout
    bars = [line for line in result.stderr.splitlines() if "timed prompts" in line]
    if flag == "--progress":
        assert len(bars) == 2
        assert bars[0].startswith("spd: timed prompts") and " 2/2 " in bars[0]
        assert bars[1].startswith("lossless check, greedy ar: timed prompts") and " 2/2 " in bars[1]
    else:
        assert bars == [] and result.stderr == ""


@pytest.mark.parametrize("flag", ["--progress", "--no-progress"])
def test_distributed_run_draws_the_controller_s_progress_on_stderr(flag: str) -> None:
    """--distributed: the launcher draws the decoding rank's reports as the same bar, before the summary."""
    args = ["run", "--model", "random:tiny-qwen3", "--method", "spd", "--stages", "2", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--limit", "2", "--max-new-tokens", "6", "--distributed", flag])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("spd distributed: 2 ranks (gloo)") and "tokens_per_s" in result.stdout
    bars = [line for line in result.stderr.splitlines() if "timed prompts" in line]
    if flag == "--progress":
        assert len(bars) == 1 and bars[0].startswith("spd: timed prompts") and " 2/2 " in bars[0]
    else:
        assert bars == []


def test_run_out_writes_a_run_directory_and_only_force_rewrites_it(tmp_path: Path) -> None:
    out = tmp_path / "spd"
    args = ["run", "--model", "random:tiny-qwen3", "--method", "spd", "--stages", "2", "--device", "cpu"]
    args += ["--limit", "1", "--max-new-tokens", "8", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "run directory:" in result.output
    assert {"config.json", "tokens.csv", "summary.json", "trace.csv"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    # what ran: on the CPU nothing compiles, whatever --compile says
    assert (config["graphs"], config["compile"], config["layers"]) == (True, False, "compiled")
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and again.output.startswith("error:") and again.output.count("\n") == 1
    assert CliRunner().invoke(app, [*args, "--force"]).exit_code == 0


def test_profile_writes_a_bundle(tmp_path: Path) -> None:
    out = tmp_path / "bundle.json"
    args = [
        "profile",
        "--model",
        "random:tiny-llama",
        "--kv-lens",
        "16",
        "--query-tokens",
        "1",
        "--iters",
        "3",
    ]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["kind"] == "spdsim.profile"


def test_bad_inputs_exit_2_with_one_line() -> None:
    for args in (
        ["run", "--model", "random:qwen3.5-27b"],  # unknown preset
        ["run", "--model", "random:tiny-qwen3", "--method", "medusa"],
        ["run", "--model", "random:tiny-qwen3", "--prompts", "mmlu"],
        ["run", "--model", "random:tiny-qwen3", "--layers", "fastest"],
        ["run", "--method", "spd", "--distributed", "--layers", "fused", "--device", "cpu"],
        ["profile", "--model", "random:tiny-qwen3", "--kv-lens", "a,b"],
        ["fetch", "gpt-7"],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.strip().count("\n") == 0 and result.output.startswith("error:")


def test_a_lost_rank_is_one_line_not_a_traceback(monkeypatch):
    """The launcher's DistributedError (a dead or silent rank) reaches the user as one line, exit code 1."""
    import executor.distributed.entry as entry
    from executor.distributed.comm import DistributedError

    def lose_rank(kw):
        raise DistributedError("rank 1 (stage 1) died (signal SIGKILL)")

    monkeypatch.setattr(entry, "run_from_cli", lose_rank)
    result = CliRunner().invoke(app, ["run", "--method", "spd", "--distributed", "--device", "cpu"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: rank 1 (stage 1) died (signal SIGKILL)"


def test_eagle3_without_a_head_warns_before_anything_runs():
    result = CliRunner().invoke(
        app, ["run", "--method", "eagle3", "--model", "random:tiny-qwen3", "--device", "tpu"]
    )
    assert result.exit_code == 2
    assert "warning: eagle3 without --head" in result.stderr and "device: unknown 'tpu'" in result.stderr


def test_a_device_read_that_never_returns_ends_the_run_in_one_line(tmp_path: Path) -> None:
    """The CLI's stall watchdog: one line naming a log with every thread's stack (the blocked read among them),
    exit 1, no run directory."""
    code = """
import sys, time
import executor.host_sync as host_sync

class Hang:  # a device tensor whose read never returns
    def reshape(self, *shape): return self
    def tolist(self): time.sleep(600)

real = host_sync.to_host
host_sync.to_host = lambda tensor, allowed=True: real(Hang(), allowed)
from spdsim.cli import main
main(sys.argv[1:])
"""
    out = tmp_path / "run"
    args = [
        "exec",
        "run",
        "--model",
        "random:tiny-qwen3",
        "--method",
        "spd",
        "--stages",
        "2",
        "--device",
        "cpu",
    ]
    args += ["--limit", "1", "--max-new-tokens", "8", "--stall-s", "1", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SPDSIM_LOG_DIR": str(tmp_path / "logs")},
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-2000:]
    assert (
        lines[0].startswith("error: the device did not finish the decode work") and "--stall-s 1" in lines[0]
    )
    (log,) = (tmp_path / "logs").iterdir()
    assert log.name in lines[0] and "in tolist" in log.read_text() and "to_host" in log.read_text()
    assert not out.exists()
