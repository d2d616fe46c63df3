"""studies/benchmarks/bench_chain.py runs on the CPU (tiny model) and writes the report the GPU run produces."""

import importlib.util
import json
from pathlib import Path

STUDIES = Path(__file__).resolve().parent.parent / "studies"


def test_bench_chain_runs_on_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_chain", STUDIES / "benchmarks" / "bench_chain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    args = ["--device", "cpu", "--model", "random:tiny-qwen3", "--new-tokens", "16", "--prompts", "1"]
    module.main([*args, "--prompt-len", "8", "--warmup-prompts", "0", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["ar_step_ms"] > 0 and report["eagle3_iteration_ms"] > 0
    assert 0.0 <= report["realised_alpha"] <= 1.0 and report["speedup"] > 0
    assert report["prompts_identical_to_ar"] == 1  # float32: lossless
    assert {"date", "torch", "device", "iteration_over_ar_step", "chain_tokens_per_s"} <= set(report)
