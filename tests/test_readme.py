"""The README's command examples run as written (issue 12), in README order, in a scratch directory.

Which lines run: every ``spdsim ...`` command of a ```bash block (a line's ``&&`` parts separately, its
trailing ``# comment`` dropped). Skipped, by this explicit rule (``skip_reason``):

1. anything that is not an ``spdsim`` command (``pip install``, ``python3 -m pytest``): the environment's set-up;
2. ``spdsim exec fetch``, and examples using ``smollm2-135m`` or a trained head under ``heads/``: they need the
   network (PyPI) or a fetched model;
3. ``spdsim exec`` with a model other than the tiny presets ``random:tiny-*``, or without ``--device cpu``:
   GPU-sized (``random:qwen3-4b`` alone needs more than 20 GB of RAM in float32);
4. a line with ``...`` (a placeholder) or ``--scheduler`` (needs a Dask cluster).

The files the examples name are provided: ``my_scenario.toml`` (a small SPD scenario, so that the 40-point sweep
is quick), ``bundle.json`` and ``runs/measured`` (the committed H200 profile bundle and AR run of
``tests/data/fidelity``, copied from the fidelity study).
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from spdsim.cli import main

ROOT = Path(__file__).resolve().parent.parent
FIDELITY = ROOT / "tests" / "data" / "fidelity"
MY_SCENARIO = """\
model = "qwen3.5-4b"
hardware = "h100"
[method]
name = "spd"
[acceptance]
alpha = 0.8
[workload]
new_tokens = 64
num_requests = 1
"""


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                command = part.split("  #", 1)[0].split(" # ", 1)[0].strip()
                if command:
                    commands.append(command)
    return commands


def skip_reason(command: str) -> str | None:
    if not command.startswith("spdsim "):
        return "rule 1: environment set-up"
    if command.startswith("spdsim exec fetch") or "smollm2-135m" in command or "heads/" in command:
        return "rule 2: needs the network or a fetched model"
    if command.startswith("spdsim exec") and (
        "--device cpu" not in command or not re.search(r"--model random:tiny-\S+", command)
    ):
        return "rule 3: GPU-sized"
    if "..." in command or "--scheduler" in command:
        return "rule 4: placeholder or cluster"
    return None


COMMANDS = readme_commands()
RUNNABLE = [c for c in COMMANDS if skip_reason(c) is None]


def test_the_rule_keeps_the_simulator_examples_and_a_cpu_executor_run():
    assert any(c.startswith("spdsim exec run") for c in RUNNABLE)
    for verb in ("list", "simulate", "timeline", "compare", "sweep", "optimize", "calibrate", "validate"):
        assert any(c.startswith(f"spdsim {verb}") for c in RUNNABLE), verb


def test_readme_examples_run_as_written(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_scenario.toml").write_text(MY_SCENARIO)
    shutil.copy(FIDELITY / "profile_h200_qwen3-8b.json", tmp_path / "bundle.json")
    shutil.copytree(FIDELITY / "gpu1_ar", tmp_path / "runs" / "measured")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for command in RUNNABLE:
        with pytest.raises(SystemExit) as info:
            main(shlex.split(command)[1:])
        captured = capsys.readouterr()
        assert info.value.code == 0, f"{command}\n{captured.err[-2000:]}"
    assert (tmp_path / "timeline.png").stat().st_size > 0 and (tmp_path / "sweep.csv").is_file()
    assert (tmp_path / "profile.json").is_file() and (tmp_path / "runs" / "mine" / "config.json").is_file()
