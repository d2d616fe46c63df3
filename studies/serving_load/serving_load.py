"""Serving under load: SPD, EAGLE-3 and tensor-parallel AR on the same eight GPUs as the request rate grows.

The paper measures one request at a time; a deployment serves a stream of them. Each method gets the same eight
H100s (roofline, Qwen3.5-4B shape, the default scenario's overheads and acceptance presets): SPD n = 8, L_s = 3
with the drafter on stage 0 (8 GPUs), the EAGLE-3 chain K = 7 with TP = 8, and AR with TP = 8. Requests arrive as
a Poisson process (docs/serving.md §1) with prompts of 128 and outputs of 256 tokens (± 50 %, vLLM's random
range ratio 0.5), are prefilled by the latency model and decoded in continuous batches of up to 32 (SPD: up to 32
requests in flight in the pipeline, docs/serving.md §4). Goodput counts the requests with TTFT <= 500 ms and
TPOT <= 5 ms.

    python3 studies/serving_load/serving_load.py        # writes studies/serving_load/results/
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from spdsim.engine.metrics import summarize
from spdsim.engine.run import simulate
from spdsim.report.provenance import study_arguments, write_provenance
from spdsim.scenario.files import default_scenario_path, load_runs, scenario_to_run_dict

OUT_DIR = Path(__file__).parent / "results"
METHODS = {
    "spd-n8-l3-colocated": "SPD n=8 L_s=3 (drafter on stage 0)",
    "eagle3-k7-tp8": "EAGLE-3 K=7, TP=8",
    "ar-tp8": "AR, TP=8",
}
RATES = (1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
REQUESTS = 400
SERVING = {
    "prompt_tokens": 128,
    "new_tokens": 256,
    "length_range_ratio": 0.5,
    "max_batch": 32,
    "prefill": "modelled",
    "slo_ttft_ms": 500.0,
    "slo_tpot_ms": 5.0,
}
COLUMNS = (
    "request_throughput",
    "output_throughput",
    "request_goodput",
    "median_ttft_ms",
    "p99_ttft_ms",
    "median_tpot_ms",
    "p99_tpot_ms",
    "median_itl_ms",
    "p99_itl_ms",
    "median_e2el_ms",
    "p99_e2el_ms",
)


def scenarios(rates=RATES, requests: int = REQUESTS):
    """(label, method, rate, scenario) of every point."""
    runs = load_runs([default_scenario_path()], methods=tuple(METHODS))
    points = []
    for run in runs:
        for rate in rates:
            workload = replace(run.scenario.workload, num_requests=requests, arrival_rate=rate, **SERVING)
            points.append((run.label, METHODS[run.label], rate, replace(run.scenario, workload=workload)))
    return points


def run(out: Path, rates=RATES, requests: int = REQUESTS) -> pd.DataFrame:
    out.mkdir(parents=True, exist_ok=True)
    rows, provenance = [], []
    for label, name, rate, scenario in scenarios(rates, requests):
        summary = summarize(simulate(scenario, record_intervals=False))
        rows.append(
            {"label": label, "method": name, "gpus": summary["gpus"], "arrival_rate": rate}
            | {key: summary[key] for key in COLUMNS}
        )
        provenance.append(scenario_to_run_dict(f"{label}@{rate:g}", scenario))
        print(
            label,
            rate,
            f"{summary['request_throughput']:.2f} req/s",
            f"p99 TPOT {summary['p99_tpot_ms']:.3f} ms",
            flush=True,
        )
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "serving_load.csv", index=False, float_format="%.6g")
    write_provenance(
        out, "serving_load", provenance, {"requests": requests, "rates": list(rates), "serving": SERVING}
    )
    return frame


def main() -> None:
    args = study_arguments(__doc__ or "", OUT_DIR)
    run(args.out)


if __name__ == "__main__":
    main()
