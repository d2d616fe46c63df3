"""studies/benchmarks/bench_spd.py runs on the CPU (tiny model) and writes the JSON the GPU run writes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

STUDIES = Path(__file__).resolve().parent.parent / "studies"


def test_bench_spd_runs_on_the_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("study_bench_spd", STUDIES / "benchmarks" / "bench_spd.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--model", "random:tiny-qwen3", "--new-tokens", "16", "--prompts", "1"]
    module.main([*argv, "--stages", "2", "--prompt-len", "8", "--warmup", "0", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["torch"] and result["date"] and result["gpu"]
    assert result["ar"]["tokens_per_s"] > 0 and result["spd"]["tokens_per_s"] > 0
    assert 0.0 <= result["spd"]["realised_alpha"] <= 1.0
    assert {"fill", "all"} <= set(result["spd"]["cycle_us_by_state"])
    assert [s["stage"] for s in result["spd"]["stage_steps"]] == [0, 1]
    assert all(s["fraction_of_copy_bandwidth"] > 0 for s in result["spd"]["stage_steps"])
    assert result["spd"]["draft_us"]["all"] > 0 and result["spd"]["verify_us"]["all"] > 0
    assert result["speedup_vs_ar"] > 0 and result["prompts_identical_to_ar"] == 1  # float32: lossless
    assert module.spd_module.SpdPrompt.next_cycle is module.CycleClock(module.torch.device("cpu"))._next_cycle
