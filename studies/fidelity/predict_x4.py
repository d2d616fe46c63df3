"""Predictions for the 4-GPU runs that could not be measured (issue 6), from 1- and 2-GPU calibration only.

The profile is `studies/fidelity/results/x4/profile_calibrated_qwen3-8b.json` (`python studies/fidelity/fidelity.py`): the
single-H200 phase tables of random:qwen3-8b (stages of 9/12/18/36 layers, drafter rows 2-5, TP shards d = 1, 2, 4,
the 2-rank all-reduce with its ring fit) plus the costs fitted from the 2-GPU runs, held at their n = 2 value for
n = 3, 4. The scenarios mirror what `run_fidelity_gpu_x4.sh` would have measured: MT-bench-like prompts of 260
tokens, 64 new tokens, synthetic i.i.d. acceptance. When the 4-GPU runs exist, `spdsim validate` on them is the
check; until then these are predictions, not validated figures.

Run: `python studies/fidelity/predict_x4.py` -> `studies/fidelity/results/x4/predictions_4gpu.{csv,md}`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from spdsim.contract.profile_schema import load_profile
from spdsim.engine.metrics import summarize
from spdsim.engine.run import simulate
from spdsim.scenario.config import AcceptanceSpec, LatencySpec, MethodSpec, ModelShape, Scenario, Workload

DATA = Path(__file__).resolve().parent / "results" / "x4"
PROFILE = DATA / "profile_calibrated_qwen3-8b.json"
PROMPT_TOKENS, NEW_TOKENS, REQUESTS = 260, 64, 3

# label -> (GPUs, method fields); the SPD entries are run at each alpha
CONFIGS = {
    "AR (1 GPU)": (1, {"name": "ar"}),
    "TP-2 AR": (2, {"name": "ar", "tensor_parallel": 2}),
    "TP-4 AR": (4, {"name": "ar", "tensor_parallel": 4}),
    "SPD n=2, drafter on stage 0": (2, {"name": "spd", "num_stages": 2, "drafter_placement": "stage0"}),
    "SPD n=4, drafter on stage 0": (4, {"name": "spd", "num_stages": 4, "drafter_placement": "stage0"}),
    "SPD n=3, drafter on its own GPU": (4, {"name": "spd", "num_stages": 3, "drafter_placement": "own-gpu"}),
}
ALPHAS = (0.7, 0.85)
MEASURED = {  # the configurations the 4 x H200 session did measure (at alpha 0.6 / 0.8 / 0.95 for SPD)
    "AR (1 GPU)": "yes: dist2_ar",
    "SPD n=2, drafter on stage 0": "at other alphas: dist2_spd_n2_colo_a*",
}


def scenario(method: dict, alpha: float, profile: dict) -> Scenario:
    return Scenario(
        method=MethodSpec(spec_layers=1, **method),
        model=ModelShape(**profile["model"]),
        latency=LatencySpec(kind="measured", profile_path=str(PROFILE)),
        acceptance=AcceptanceSpec(kind="iid", alpha=alpha),
        workload=Workload(prompt_tokens=PROMPT_TOKENS, new_tokens=NEW_TOKENS, num_requests=REQUESTS),
    )


def predict() -> pd.DataFrame:
    profile = load_profile(PROFILE)
    baseline = simulate(scenario({"name": "ar"}, 0.0, profile))
    rows = []
    for label, (gpus, method) in CONFIGS.items():
        for alpha in ALPHAS if method["name"] == "spd" else (None,):
            result = simulate(scenario(method, alpha or 0.0, profile))
            summary = summarize(result, baseline)
            rows.append(
                {
                    "configuration": label,
                    "gpus": gpus,
                    "alpha": alpha,
                    "measured": MEASURED.get(label, "no: the job hung (fidelity.md)"),
                    "tpot_ms": round(summary["tpot_ms"], 3),
                    "tokens_per_s": round(summary["tokens_per_s"], 1),
                    "speedup_vs_ar": round(summary["speedup"], 3),
                    "rho": None if summary.get("rho") is None else round(summary["rho"], 3),
                }
            )
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    cells = [[("" if pd.isna(v) else str(v)) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"


def main() -> None:
    table = predict()
    table.to_csv(DATA / "predictions_4gpu.csv", index=False)
    header = (
        "# Predicted, not measured: the 4-GPU configurations of issue 6 (random:qwen3-8b, 4 x H200)\n\n"
        f"Profile `{PROFILE.name}` (1- and 2-GPU calibration only); {REQUESTS} prompts of {PROMPT_TOKENS} tokens, "
        f"{NEW_TOKENS} new tokens, i.i.d. synthetic acceptance. `python studies/fidelity/predict_x4.py`.\n\n"
    )
    (DATA / "predictions_4gpu.md").write_text(header + markdown(table))
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
