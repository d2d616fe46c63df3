"""Every command through typer's CliRunner, every bad input, determinism, and no torch import."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from spdsim.cli import app, main

runner = CliRunner()
SMALL = ["--set", "workload.new_tokens=48", "--set", "workload.num_requests=1"]


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_simulate_default_prints_the_table_and_writes_the_run_directory(tmp_path):
    out = tmp_path / "run"
    result = invoke("simulate", *SMALL, "--out", str(out))
    assert result.exit_code == 0, result.output
    for header in ("run", "GPUs", "tokens/s", "TPOT ms", "speedup", "mean AL", "rho", "n*rho", "bubble"):
        assert header in result.stdout
    for label in ("spd-n8-l3", "eagle3-k3", "eagle3-k7", "ar-tp8", "dflash-k15", "ppsd-n8", "cascade"):
        assert label in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        ".spdsim",
        "config.json",
        "summary.json",
        "tokens.csv",
        "trace.json",
    ]
    summary = json.loads((out / "summary.json").read_text())["runs"]
    by_label = {row["label"]: row for row in summary}
    assert by_label["ar"]["speedup"] == pytest.approx(1.0)
    assert by_label["spd-n8-l3"]["gpus"] == 9 and by_label["spd-n8-l3"]["rho"] > 0
    tokens = pd.read_csv(out / "tokens.csv")
    assert list(tokens.columns) == ["method", "request", "index", "commit_time_us", "iteration", "from_draft"]
    assert (tokens.groupby("method").size() == 48).all()
    trace = json.loads((out / "trace.json").read_text())
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert spans and all(e["dur"] > 0 for e in spans)
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert names == set(by_label)


def test_same_scenario_gives_byte_identical_files(tmp_path):
    for name in ("a", "b"):
        assert (
            invoke(
                "simulate", *SMALL, "--set", "overheads.jitter_cv=0.1", "--out", str(tmp_path / name)
            ).exit_code
            == 0
        )
    for filename in ("config.json", "tokens.csv", "summary.json", "trace.json"):
        assert (tmp_path / "a" / filename).read_bytes() == (tmp_path / "b" / filename).read_bytes(), filename


def test_a_run_directory_reproduces_itself(tmp_path):
    assert invoke("simulate", *SMALL, "--out", str(tmp_path / "first")).exit_code == 0
    result = invoke("simulate", str(tmp_path / "first"), "--out", str(tmp_path / "again"))
    assert result.exit_code == 0, result.output
    first, again = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("first", "again"))
    assert first == again


def test_default_run_directory_name_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("simulate", *SMALL).exit_code == 0
    assert invoke("simulate", *SMALL).exit_code == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("default-")
    assert not [p for p in (tmp_path / "runs").iterdir() if p.name.startswith(".")]


def test_compare_selects_methods_and_files(tmp_path):
    result = invoke(
        "compare", "--method", "spd", "--method", "eagle3", *SMALL, "--set", "acceptance.alpha=0.9"
    )
    assert result.exit_code == 0, result.output
    assert "spd-n8-l3" in result.stdout and "eagle3-k7" in result.stdout and "dflash" not in result.stdout
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(
        'model = "qwen3.5-4b"\nhardware = "h100"\nlabel = "spd"\n[workload]\nnew_tokens = 32\nnum_requests = 1\n'
    )
    b.write_text(a.read_text().replace("h100", "h200"))
    result = invoke("compare", str(a), str(b), "--out", str(tmp_path / "cmp"))
    assert result.exit_code == 0, result.output
    assert "a:spd" in result.stdout and "b:spd" in result.stdout and "h200" in result.stdout
    assert (tmp_path / "cmp" / "summary.json").is_file()


def test_sweep_writes_one_row_per_point_in_grid_order(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        'model = "qwen3.5-4b"\nhardware = "h100"\n[workload]\nnew_tokens = 32\nnum_requests = 1\n'
    )
    out = tmp_path / "sweep.csv"
    args = ["sweep", str(scenario), "--grid", "method.num_stages=2,4", "--grid", "acceptance.alpha=0.5:0.9:3"]
    result = invoke(*args, "--out", str(out), "--workers", "1")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert list(zip(frame["method.num_stages"], frame["acceptance.alpha"], strict=True)) == [
        (2, 0.5),
        (2, 0.7),
        (2, 0.9),
        (4, 0.5),
        (4, 0.7),
        (4, 0.9),
    ]
    assert (frame["speedup"] > 0).all()
    result = invoke(*args, "--out", str(tmp_path / "sweep.parquet"), "--workers", "2")
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "sweep.parquet"), frame, check_dtype=False)


def test_timeline_from_run_directory_and_scenario(tmp_path):
    assert invoke("simulate", *SMALL, "--out", str(tmp_path / "run")).exit_code == 0
    result = invoke("timeline", str(tmp_path / "run"), "--out", str(tmp_path / "t.png"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    result = invoke(
        "timeline",
        str(tmp_path / "run" / "config.json"),
        "--out",
        str(tmp_path / "t.svg"),
        "--method",
        "eagle3-k3",
        "--window-ms",
        "0:5",
    )
    assert result.exit_code == 0, result.output
    assert "<svg" in (tmp_path / "t.svg").read_text()[:400]


def test_list_shows_every_section_with_sources():
    result = invoke("list")
    assert result.exit_code == 0, result.output
    for text in (
        "methods",
        "hardware",
        "models",
        "presets",
        "h100",
        "qwen3.5-4b/humaneval/spd-n8-l3",
        "source",
    ):
        assert text in result.stdout
    assert invoke("list", "presets").exit_code == 0


BAD = [
    (["simulate", "--set", "method.name=medusa"], "method.name: unknown method 'medusa'"),
    (
        ["simulate", "--set", "hardware=a100"],
        "hardware: unknown hardware 'a100' (allowed: a100-80gb, b200, h100-2node-100g, ",
    ),
    (["simulate", "--acceptance", "qwen3.5-4b/overall/nope"], "acceptance.preset: unknown preset"),
    (["simulate", "--set", "acceptance.alpha=1.2"], "acceptance.alpha: must be in [0, 1]"),
    (["simulate", "--set", "method.num_stages=0"], "method.num_stages: must be >= 1"),
    (
        ["simulate", "--set", "method.num_stages=6"],
        "method.num_stages: 6 does not divide model.num_layers = 32",
    ),
    (["simulate", "--set", "method.stage_layers=4,4,4,4,4,4,4,3"], "method.stage_layers: sums to 31"),
    # a measured profile of a 36-layer model under the default scenario: each message names the way out
    (
        ["simulate", "--profile", "qwen3-4b_h100"],
        "8 does not divide model.num_layers = 36; give method.stage_layers (8 layer counts summing to 36, e.g. "
        "--set method.stage_layers=[5,5,5,5,4,4,4,4])",
    ),
    (
        ["simulate", "--profile", "qwen3-4b_h100", "--set", "method.stage_layers=[5,5,5,5,4,4,4,4]"],
        "kv_len=[128, 640] outside the measured range [256, 4096] (no extrapolation); give "
        "workload.prompt_tokens >= 256",
    ),
    (
        [
            "simulate",
            "--profile",
            "qwen3-4b_h100",
            "--set",
            "method.num_stages=4",
            "--set",
            "workload.prompt_tokens=256",
        ],
        "needs phase 'drafter', which the profile lacks (it has ar_step, embed, head, layers, p2p)",
    ),
    (
        ["simulate", "--set", "latency.kind=constant", "--set", "latency.layer_ns=-1"],
        "latency.layer_ns: must be >= 0",
    ),
    (["simulate", "--set", "overheads.control_ns=nan"], "overheads.control_ns: expected an integer, got nan"),
    (["simulate", "--set", "overheads.jitter_cv=nan"], "overheads.jitter_cv: must be a finite number >= 0"),
    (["simulate", "/nonexistent/scenario.toml"], "no such run directory or scenario file"),
    (["simulate", "--profile", "/nonexistent/bundle.json"], "profile: no such file"),
    (["list", "gpus"], "list: unknown section 'gpus'"),
    (
        ["sweep", "MISSING.toml", "--grid", "seed=1,2", "--out", "x.csv"],
        "no such run directory or scenario file",
    ),
    (["timeline", "MISSING", "--out", "x.png"], "no such run directory or scenario file"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_input_exits_2_with_one_line_and_no_run_directory(tmp_path, args, message):
    out = tmp_path / "out"
    result = invoke(*args, *(["--out", str(out)] if args[0] == "simulate" else []))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_malformed_files_through_the_cli(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("method = {name = ")
    result = invoke("simulate", str(bad), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "is not valid TOML" in result.stderr
    trace = tmp_path / "trace.csv"
    trace.write_text("prompt_id,verify_index\np,0\n")
    result = invoke("simulate", "--set", "acceptance.kind=trace", "--set", f"acceptance.trace_path={trace}")
    assert result.exit_code == 2 and "missing column" in result.stderr
    profile = tmp_path / "bundle.json"
    profile.write_text('{"schema_version": 1, "kind": "spdsim.profile"}')
    result = invoke("simulate", "--profile", str(profile), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "profile: missing field 'hardware'" in result.stderr
    result = invoke("simulate", "--set", "acceptance.alpha=nan", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "acceptance.alpha: must be in [0, 1] (got nan)" in result.stderr
    result = invoke("sweep", str(bad), "--grid", "seed=1", "--out", str(tmp_path / "s.txt"))
    assert result.exit_code == 2
    result = invoke("timeline", str(tmp_path), "--out", str(tmp_path / "t.gif"))
    assert result.exit_code == 2 and "must end in .png or .svg" in result.stderr
    assert not (tmp_path / "out").exists()


def test_main_turns_usage_errors_into_one_line_exit_2(capsys):
    for argv in (["simulate", "--bogus"], ["frobnicate"], ["sweep"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err


def test_simulate_never_imports_torch(tmp_path):
    code = (
        "import sys\n"
        "from spdsim.cli import main\n"
        "try:\n"
        f"    main(['simulate', '--set', 'workload.new_tokens=16', '--out', {str(tmp_path / 'run')!r}])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "assert 'torch' not in sys.modules, 'spdsim imported torch'\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr


def _roofline_profile(path):
    """A schema-v1 bundle tabulating the default roofline (linear in kv_len, so interpolation is exact)."""
    from spdsim.latency.build import build_latency_model
    from spdsim.scenario.files import load_runs

    scenario = load_runs(methods=["spd"])[0].scenario
    lat = build_latency_model(scenario)

    def entry(ns, **coords):
        return {**coords, "median_us": ns / 1000, "p10_us": ns / 1000, "p90_us": ns / 1000, "samples": 1}

    phases = {
        "layers": [
            entry(int(lat.layers_ns(layers, q, kv)), layers=layers, query_tokens=q, kv_len=kv)
            for layers in (1, 4, 32)
            for q in (1, 16)
            for kv in (0, 4096)
        ],
        "embed": [entry(lat.embed_ns(q), query_tokens=q) for q in (1, 16)],
        "head": [entry(lat.head_ns(q), query_tokens=q) for q in (1, 16)],
        "drafter": [
            entry(int(lat.pdm_ns(s, q, kv)), spec_layers=s, query_tokens=q, kv_len=kv)
            for s in (1, 4)
            for q in (1, 17)
            for kv in (0, 4096)
        ],
        "chain_draft": [
            entry(int(lat.chain_draft_ns(d, kv)), draft_layers=d, kv_len=kv)
            for d in (1, 8)
            for kv in (0, 4096)
        ],
    }
    model = {name: getattr(scenario.model, name) for name in scenario.model.__dataclass_fields__}
    bundle = {
        "schema_version": 1,
        "kind": "spdsim.profile",
        "hardware": {"name": "h100"},
        "model": model,
        "dtype": "bfloat16",
        "software": {},
        "date": "2026-11-22",
        "source": "test: the roofline tabulated",
        "phases": phases,
    }
    path.write_text(json.dumps(bundle))
    return path


def test_profile_bundle_drives_the_latency(tmp_path):
    profile = _roofline_profile(tmp_path / "bundle.json")
    args = ["compare", "--method", "spd", "--method", "ar", *SMALL]
    result = invoke(*args, "--profile", str(profile), "--out", str(tmp_path / "measured"))
    assert result.exit_code == 0, result.output
    assert "ar-tp8 [roofline]" in result.stdout
    assert invoke(*args, "--out", str(tmp_path / "roofline")).exit_code == 0
    config = json.loads((tmp_path / "measured" / "config.json").read_text())
    kinds = {run["label"]: run["latency"]["kind"] for run in config["runs"]}
    assert kinds == {
        "spd-n8-l3": "measured",
        "spd-n8-l3-colocated": "measured",
        "ar": "measured",
        "ar-tp8 [roofline]": "roofline",
    }
    measured, roofline = (
        {r["label"]: r for r in json.loads((tmp_path / d / "summary.json").read_text())["runs"]}
        for d in ("measured", "roofline")
    )
    for label in ("spd-n8-l3", "ar"):
        assert measured[label]["tokens_per_s"] == pytest.approx(roofline[label]["tokens_per_s"], rel=1e-3)


def test_acceptance_preset_of_another_model_switches_the_shape(tmp_path):
    result = invoke("compare", "--method", "spd", *SMALL, "--acceptance", "qwen3.5-9b/humaneval/spd-n16-l2")
    assert result.exit_code == 0, result.output
    assert "spd-n16-l2" in result.stdout and "qwen3.5-9b on h100" in result.stdout


def test_square_brackets_are_printed_not_eaten_as_markup():
    result = invoke("list", "methods")
    assert result.exit_code == 0
    assert "k in [k_min, k_max]" in " ".join(result.stdout.split())


def test_a_missing_optional_package_names_what_to_install():
    from spdsim.boundary import message_of

    code, text = message_of(ModuleNotFoundError("No module named 'torch'", name="torch"))
    assert code == 2 and "spdsim[executor]" in text
    code, text = message_of(ModuleNotFoundError("No module named 'pyarrow'", name="pyarrow"))
    assert code == 2 and text.startswith(
        "this command needs the 'parquet' extra: pip install 'spdsim[parquet]'"
    )


def test_an_unexpected_error_is_one_line_naming_a_log_with_the_traceback(tmp_path, monkeypatch, capsys):
    import spdsim.report.compare

    monkeypatch.setenv("SPDSIM_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr(spdsim.report.compare, "simulate_runs", lambda runs, **_: 1 / 0)
    with pytest.raises(SystemExit) as info:
        main(["compare", "--method", "ar"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1 and len(err) == 1 and err[0].startswith("internal error: ZeroDivisionError")
    log = next((tmp_path / "logs").iterdir())
    assert "Traceback" in log.read_text() and str(log) in err[0]


def test_simulate_traces_the_chosen_requests_of_a_serving_run(tmp_path):
    serving = ["--set", "workload.arrival_rate=50", "--set", "workload.num_requests=5"]
    out = tmp_path / "served"
    result = invoke("simulate", *SMALL, *serving, "--trace-requests", "0,3", "--out", str(out))
    assert result.exit_code == 0, result.output
    with gzip.open(out / "trace.json.gz", "rt") as handle:
        events = json.load(handle)["traceEvents"]
    tracks = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert {t for t in tracks if t.startswith("request ")} == {"request 0", "request 3"}
    result = invoke("simulate", *SMALL, *serving, "--trace-requests", "first", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2 and "--trace-requests" in result.stderr
    for negative in ("-1", "0,-3"):
        result = invoke(
            "simulate", *SMALL, *serving, "--trace-requests", negative, "--out", str(tmp_path / "y")
        )
        assert result.exit_code == 2 and "none negative" in result.stderr and not (tmp_path / "y").exists()
