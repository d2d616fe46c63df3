"""Issue 12's battery of bad inputs: every case ends in one line on stderr, exit code 2, no traceback, and leaves
every file of the working directory as it was (nothing is created either: no output is new here).

Cases are generated (``battery_cases``): bad output paths for every command that writes, bad ``--set`` values for
every command that builds scenarios, bad files, bad options. They run in-process through ``spdsim.cli.main`` (the
console entry point), in a working directory holding the fixtures. The three cases that used to hang must end
within 5 s.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest

from spdsim.cli import main

ROOT = Path(__file__).resolve().parent.parent
FIDELITY = ROOT / "tests" / "data" / "fidelity"
SMALL_TOML = """\
model = "qwen3.5-4b"
hardware = "h100"
[method]
name = "spd"
num_stages = 8
[acceptance]
alpha = 0.8
[workload]
new_tokens = 16
num_requests = 1
"""

# (argv) for the cases that hung before issue 12
HANG_CASES = (
    ("simulate", "--set", "workload.num_requests=1000000000"),
    ("compare", "--method", "specdecpp-h0.3", "--set", "method.k_max=1000000000"),
    ("sweep", "small.toml", "--grid", "acceptance.alpha=0:1:1000000000", "--out", "s.csv"),
)

BAD_SETS = (
    "seed=-1",
    "seed=true",
    "seed=1e300",
    "overheads.jitter_cv=1e300",
    "overheads.fixed_cycle_ns=1e30",
    "overheads.control_ns=-5",
    "overheads.drafter_contention=0.5",
    "workload.new_tokens=1000000000000",
    "workload.new_tokens=-1",
    "workload.new_tokens=abc",
    "workload.num_requests=1000000000",
    "workload.prompt_tokens=1e12",
    "method.name=foo",
    "method.num_stages=0",
    "method.num_stages=3",
    "method.num_stages=100000",
    "method.k_max=1000000000",
    "method.draft_tokens=100000",
    "method.spec_layers=-1",
    "method.tensor_parallel=100000",
    "method.stage_layers=[1,2]",
    "method.drafter_placement=moon",
    "acceptance.alpha=2",
    "acceptance.alpha=nan",
    "acceptance.kind=foo",
    "acceptance.rates=[0.5,0.9]",
    "acceptance.kind=trace",
    "latency.kind=foo",
    "latency.kind=measured",
    "model=nomodel",
    "hardware=nohw",
    "model.num_layers=0",
    "hardware.mem_bandwidth_gbps=0",
    "hardware.mem_bandwidth_gbps=1e-300",
    "foo=1",
    "method.foo=1",
    "=3",
    "noequals",
)

# commands that build scenarios, with the arguments that make them otherwise valid
SCENARIO_COMMANDS = (
    ("simulate",),
    ("compare",),
    ("optimize",),
    ("timeline", "small.toml", "--out", "t.png"),
    ("sweep", "small.toml", "--grid", "overheads.sampling_ns=0,1", "--out", "s.csv"),
)

BAD_DIRS = ("keep", ".", "", "/proc/x", "afile", "afile/sub", "ownrun")
DIR_WRITERS = (
    ("simulate", "--set", "workload.new_tokens=16"),
    ("compare", "--method", "spd"),
    ("exec", "run", "--model", "random:tiny-qwen3", "--device", "cpu"),
)
FILE_WRITERS = {  # command -> (argv before --out, good suffix)
    "sweep": (("sweep", "small.toml", "--grid", "method.num_stages=2,4"), ".csv"),
    "timeline": (("timeline", "small.toml"), ".png"),
    "optimize": (("optimize",), ".csv"),
    "calibrate": (("calibrate", "bundle.json"), ".json"),
    "validate": (("validate", "measured", "--profile", "bundle.json"), ".csv"),
    "exec profile": (("exec", "profile", "--model", "random:tiny-qwen3", "--device", "cpu"), ".json"),
}

OTHER_CASES = (
    ("simulate", "binary.toml"),
    ("simulate", "--profile", "binary.json"),
    ("simulate", "--profile", "string_model.json"),
    ("simulate", "absent.toml"),
    ("simulate", "scenario.yaml"),
    ("simulate", "broken.toml"),
    ("simulate", "list.json"),
    ("simulate", "unknown_field.toml"),
    ("simulate", "--acceptance", "no/such/preset"),
    ("compare", "--method", "nosuch"),
    ("calibrate", "binary.json", "--out", "p.json"),
    ("calibrate", "bundle.json", "--run", "other_model", "--out", "p.json"),
    ("calibrate", "bundle.json", "--run", "afile", "--out", "p.json"),
    ("validate", "measured"),
    ("validate", "keep", "--profile", "bundle.json"),
    ("optimize", "--workers", "-5"),
    ("optimize", "--max-gpus", "1"),
    ("optimize", "--stages", "0:3"),
    ("optimize", "--stages", "a:b"),
    ("optimize", "--alpha-model", "foo"),
    ("optimize", "--finalists", "0"),
    ("sweep", "small.toml", "--grid", "method.num_stages=2", "--workers", "-5", "--out", "s.csv"),
    ("sweep", "small.toml", "--grid", "method.num_stages=2", "--scheduler", "notaurl", "--out", "s.csv"),
    (
        "sweep",
        "small.toml",
        "--grid",
        "acceptance.alpha=0.5,0.6",
        "--grid",
        "acceptance.alpha=0.7",
        "--out",
        "s.csv",
    ),
    ("sweep", "small.toml", "--grid", "acceptance.alpha", "--out", "s.csv"),
    ("sweep", "small.toml", "--grid", "acceptance.alpha=0:1:x", "--out", "s.csv"),
    ("sweep", "small.toml", "--grid", "acceptance.alpha=0:inf:3", "--out", "s.csv"),
    ("sweep", "small.toml", "--out", "s.csv"),
    ("sweep", "small.toml", "--grid", "method.num_stages=2"),
    ("timeline", "small.toml", "--out", "t.png", "--window-ms", "5:1"),
    ("timeline", "small.toml", "--out", "t.png", "--method", "nosuch"),
    ("timeline", "absent_dir", "--out", "t.png"),
    ("list", "nosuch"),
    ("frobnicate",),
    ("simulate", "--bogus"),
    ("exec", "run", "--method", "foo", "--model", "random:tiny-qwen3", "--device", "cpu"),
    ("exec", "run", "--model", "random:tiny-qwen3", "--device", "tpu"),
    ("exec", "run", "--model", "random:nosuch", "--device", "cpu"),
    ("exec", "run", "--model", "random:tiny-qwen3", "--device", "cpu", "--max-new-tokens", "100000"),
    ("exec", "run", "--model", "random:tiny-qwen3", "--device", "cpu", "--prompts", "nosuch"),
    ("exec", "run", "--tp", "2"),
    ("exec", "profile", "--model", "random:tiny-qwen3", "--device", "cpu", "--kv-lens", "abc"),
)


def battery_cases() -> list[tuple[str, ...]]:
    cases: list[tuple[str, ...]] = list(HANG_CASES)
    for command in SCENARIO_COMMANDS:
        cases.extend((*command, "--set", bad) for bad in BAD_SETS if (*command, "--set", bad) not in cases)
    for command in DIR_WRITERS:
        cases.extend((*command, "--out", bad) for bad in BAD_DIRS)
    for before, suffix in FILE_WRITERS.values():
        for bad in ("out.txt", f"adir{suffix}", f"/proc/x{suffix}", "", f"afile/x{suffix}"):
            cases.append((*before, "--out", bad))
    cases.extend(OTHER_CASES)
    return cases


CASES = battery_cases()


def _snapshot(root: Path) -> dict[str, str]:
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        state[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("battery")
    (root / "small.toml").write_text(SMALL_TOML)
    (root / "keep").mkdir()
    (root / "keep" / "notes.txt").write_text("notes\n")
    (root / "afile").write_text("a file\n")
    for suffix in (".csv", ".png", ".json"):
        (root / f"adir{suffix}").mkdir()
    (root / "ownrun").mkdir()
    (root / "ownrun" / "config.json").write_text("{}\n")
    (root / "ownrun" / ".spdsim").write_text('{"files": ["config.json"]}\n')
    (root / "binary.toml").write_bytes(bytes(range(256)) * 4)
    (root / "binary.json").write_bytes(b"\xff\xfe\x00\x81" * 64)
    bundle = json.loads((FIDELITY / "profile_h200_qwen3-8b.json").read_text())
    (root / "bundle.json").write_text(json.dumps(bundle))
    (root / "string_model.json").write_text(json.dumps({**bundle, "model": "qwen3-8b"}))
    (root / "scenario.yaml").write_text("model: x\n")
    (root / "broken.toml").write_text("[method\nname = 1\n")
    (root / "list.json").write_text("[1, 2]\n")
    (root / "unknown_field.toml").write_text('colour = "blue"\n')
    shutil.copytree(FIDELITY / "gpu1_ar", root / "measured")
    other = root / "other_model"
    shutil.copytree(FIDELITY / "gpu1_ar", other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model": "random:qwen3-4b"}))
    return root


def test_the_battery_has_the_issue_size():
    assert len(CASES) >= 225 and len(set(CASES)) == len(CASES)


@pytest.mark.parametrize("argv", CASES, ids=[" ".join(c)[:80] for c in CASES])
def test_every_bad_input_ends_in_one_line_exit_2_and_changes_nothing(argv, workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("SPDSIM_LOG_DIR", str(workspace.parent / "logs"))
    before = _snapshot(workspace)
    start = time.monotonic()
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert info.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert _snapshot(workspace) == before
    if argv in HANG_CASES:
        assert elapsed < 5.0, f"{argv} took {elapsed:.1f} s"
