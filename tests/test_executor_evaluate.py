"""Head evaluation on a tiny random target with untrained heads: lossless, well-formed tables, traces and presets."""

import csv
import json

import pytest
import torch
from train_tiny import one_thread_fixture
from typer.testing import CliRunner

from executor.cli import app
from executor.evaluate import TABLE_COLUMNS, EvalConfig, evaluate_head, trace_summary
from executor.heads.checkpoint import save_spd_checkpoint
from executor.heads.eagle3 import save_eagle3
from executor.heads.specdecpp import AcceptanceHead, save_specdecpp
from executor.models import load_fast_model
from executor.presets_from_traces import build_presets, write_presets
from executor.train.run import TrainHeadOptions, build_eagle3_head, build_spd_head
from spdsim.scenario.acceptance import load_trace
from spdsim.scenario.files import load_runs
from spdsim.scenario.presets import load_presets

CONFIG = EvalConfig(datasets=("gsm8k",), limit=2, max_new_tokens=6, k_values=(2,), thresholds=(0.3,), k_max=4)


one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model, loaded = load_fast_model("random:tiny-llama", seed=0)
    config = loaded.hf_model.config
    torch.manual_seed(0)
    options = TrainHeadOptions(model="random:tiny-llama", head="spd", out=root, stage_layers=(3, 1), stages=2)
    save_spd_checkpoint(build_spd_head(model, config, options), config, root / "spd.pt")
    save_eagle3(build_eagle3_head(model, config), root / "eagle3.pt")
    save_specdecpp(AcceptanceHead(config.hidden_size, 3), root / "acc")
    rows = {}
    for name, kwargs in (("spd.pt", {}), ("eagle3.pt", {}), ("acc", {"chain_head": root / "eagle3.pt"})):
        out = root / f"eval_{name}"
        rows[name] = evaluate_head(
            model, loaded.tokenizer, root / name, CONFIG, out, progress=lambda _: None, **kwargs
        )
    return root, rows


def test_every_run_is_lossless_at_t0(evaluated):
    _, rows = evaluated
    checked = [r for runs in rows.values() for r in runs if r["temperature"] == 0.0]
    assert len(checked) == 3
    assert all(r["lossless_prompts"] == r["lossless_checked"] == 2 for r in checked)


def test_tables_and_traces_are_well_formed(evaluated):
    root, rows = evaluated
    for name, runs in rows.items():
        folder = root / f"eval_{name}"
        with (folder / "acceptance.csv").open() as handle:
            table = list(csv.DictReader(handle))
        assert tuple(table[0]) == TABLE_COLUMNS and len(table) == len(runs) == 2
        markdown = (folder / "acceptance.md").read_text()
        assert '"device": "cpu"' in markdown and "date_utc" in markdown and '"max_new_tokens": 6' in markdown
        json.loads((folder / "eval.json").read_text())
        for row in runs:
            trace = load_trace(folder / row["trace"])  # spdsim's own trace reader
            assert trace.kind == ("spd" if row["method"] == "spd" else "chain")
            assert len(trace.prompt_ids) == 2
    spd = rows["spd.pt"][0]
    assert spd["n_rho"] == pytest.approx(2 * spd["rho"]) and spd["label"] == "spd-n2-l2"


def test_trace_summary_closed_form():
    rows = [
        {
            "prompt_id": "a",
            "verify_index": 0,
            "draft_index": i + 1,
            "accepted": a,
            "width": 3,
            "state": "chain",
        }
        for i, a in enumerate((1, 1, 0))
    ] + [
        {
            "prompt_id": "a",
            "verify_index": 1,
            "draft_index": i + 1,
            "accepted": a,
            "width": 3,
            "state": "chain",
        }
        for i, a in enumerate((0, 0, 0))
    ]
    summary = trace_summary(rows, "chain")
    assert summary["r_k"] == [0.5, 0.5, 0.0] and summary["mean_acceptance_length"] == 2.0


def test_presets_from_traces_load_in_the_simulator(evaluated, tmp_path):
    root, _ = evaluated
    entries = build_presets([root / "eval_spd.pt", root / "eval_eagle3.pt", root / "eval_acc"], "tiny-model")
    write_presets(entries, tmp_path / "tiny_model.json", "test")
    presets = load_presets([tmp_path])
    spd = presets["tiny-model/gsm8k/spd"]
    assert spd.acceptance["kind"] == "spd-state" and spd.method["stage_layers"] == [3, 1]
    assert presets["tiny-model/gsm8k/eagle3-k2-t1"].acceptance["kind"] == "positional"
    assert presets["tiny-model/gsm8k/specdecpp-h0.3"].method["stop_threshold"] == 0.3
    assert "measured" in spd.source
    measured = next(r for r in evaluated[1]["spd.pt"] if r["temperature"] == 0.0)
    assert spd.acceptance["alpha_refill"] == pytest.approx(measured["alpha_refill"], abs=1e-6)
    runs = load_runs(acceptance="tiny-model/gsm8k/eagle3-k2", preset_dirs=(tmp_path,))
    assert any(r.scenario.acceptance.preset == "tiny-model/gsm8k/eagle3-k2" for r in runs)


def test_eval_cli_rejects_bad_input(tmp_path):
    result = CliRunner().invoke(app, ["eval", "--head", str(tmp_path / "missing.pt"), "--device", "cpu"])
    assert result.exit_code == 2 and "head" in result.output
    (tmp_path / "h.pt").write_bytes(b"x")
    result = CliRunner().invoke(app, ["eval", "--head", str(tmp_path / "h.pt"), "--prompts", "alpaca"])
    assert result.exit_code == 2 and "prompts" in result.output


@pytest.mark.parametrize("flag", ["--progress", "--no-progress"])
def test_eval_cli_draws_each_run_s_prompt_bar_on_stderr(evaluated, tmp_path, flag):
    """SpecDec++ at T = 0: one bar for the greedy AR reference, one for the head's run, on stderr only."""
    root, _ = evaluated
    args = ["eval", "--head", str(root / "acc"), "--chain-head", str(root / "eagle3.pt")]
    args += ["--model", "random:tiny-llama", "--prompts", "gsm8k", "--limit", "2", "--max-new-tokens", "6"]
    args += ["--temperatures", "0", "--thresholds", "0.3", "--k-max", "4", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "eval"), flag])
    assert result.exit_code == 0, result.output
    assert "eval specdecpp-h0.3 gsm8k T=0: 2 prompts" in result.stdout and "eval: 1 rows" in result.stdout
    assert "timed prompts" not in result.stdout
    bars = [line for line in result.stderr.splitlines() if "timed prompts" in line]
    if flag == "--progress":
        assert [bar.split(":")[0] for bar in bars] == ["ar reference gsm8k T=0", "specdecpp-h0.3 gsm8k T=0"]
        assert all(" 2/2 " in bar for bar in bars)
    else:
        assert result.stderr == ""


def test_heads_report_draws_the_three_plots(evaluated, tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("heads_report", Path("studies/heads/heads_report.py"))
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    root, _ = evaluated
    folders = [str(root / f"eval_{n}") for n in ("spd.pt", "eagle3.pt", "acc")]
    assert report.main([*folders, "--out", str(tmp_path)]) == 0
    for name in (
        "spd_alpha_vs_n.png",
        "chain_rk_vs_position.png",
        "specdecpp_stop_lengths.png",
        "summary.md",
    ):
        assert (tmp_path / name).stat().st_size > 0
