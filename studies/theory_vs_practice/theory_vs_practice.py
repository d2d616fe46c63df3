"""Theory vs practice: where SPD's theoretical speedup n / (1 + (n-1)(1-alpha)) goes on real hardware.

For n = 2..16 (Qwen3.5-4B shape, H100 roofline, L_s = 3, alpha from the SPD repository's presets) the script
simulates SPD against AR on the same hardware, first with ideal balanced stages (constant per-layer latency
from the roofline, nothing else), then with each cost the closed form ignores added on its own ("isolated")
and added one after the other ("cumulative", the waterfall):

1. stage imbalance: the integer layer split, embedding on the first stage, final norm + lm_head + verify on the
   exit (the roofline's embed/head times);
2. drafter latency: the PDM (aggregation + L_s decoder layers + draft lm_head) on its own GPU, from the roofline;
3. communication: hidden-state send per stage hop, control broadcast, anchor gather (small NCCL messages);
4. fixed per-cycle costs: host/driver work per cycle;
5. jitter: lognormal phase-latency noise (cv 0.1); a cycle waits for its slowest member.

Overhead magnitudes are those of the embedded default scenario (spdsim/scenarios/default.toml) and the h100
profile; the base scenario is written next to the results. One command reproduces everything:

    python studies/theory_vs_practice/theory_vs_practice.py            # writes studies/theory_vs_practice/results/
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
from pathlib import Path

from spdsim import __version__
from spdsim.drivers.sweep import sweep_tasks, write_table
from spdsim.latency.build import build_latency_model
from spdsim.report.plots import plot_lines
from spdsim.scenario.files import build_scenario, default_scenario_path, read_scenario_file
from spdsim.scenario.presets import get_preset, load_presets

OUT_DIR = Path(__file__).parent / "results"
STAGES = range(2, 17)
DATASETS = ("overall", "mt_bench", "gsm8k", "humaneval")
PRESET = "qwen3.5-4b/{dataset}/spd-n8-l3"
OVERHEADS = ("stage imbalance", "drafter latency", "communication", "fixed per-cycle", "jitter")
JITTER_CV = 0.1
WORKLOAD = {"prompt_tokens": 128, "new_tokens": 512, "num_requests": 1}


def balanced_split(layers: int, stages: int) -> list[int]:
    """The most even integer split (larger stages first), e.g. 32 layers over 3 stages -> 11, 11, 10."""
    base, extra = divmod(layers, stages)
    return [base + 1] * extra + [base] * (stages - extra)


def roofline_costs(base: dict) -> dict[str, int]:
    """Per-phase times of the default scenario's roofline (ns) at the mid-generation KV length."""
    scenario = build_scenario({**base, "method": {"name": "spd", "num_stages": 8, "spec_layers": 3}})
    latency = build_latency_model(scenario)
    kv = WORKLOAD["prompt_tokens"] + WORKLOAD["new_tokens"] // 2
    return {
        "layer_ns": int(latency.layers_ns(1, 1, kv)),
        "embed_ns": int(latency.embed_ns(1)),
        "head_ns": int(latency.head_ns(1)),
        "pdm_ns": int(latency.pdm_ns(3, 9, kv)),
        "p2p_ns": int(latency.p2p_ns(latency.hidden_bytes(1))),
    }


def variant_settings(costs: dict[str, int], defaults: dict) -> dict[str, tuple[dict, dict, bool]]:
    """overhead name -> (latency fields, overhead fields, uneven split) that the overhead adds."""
    return {
        "stage imbalance": ({"embed_ns": costs["embed_ns"], "head_ns": costs["head_ns"]}, {}, True),
        "drafter latency": ({"pdm_ns": costs["pdm_ns"]}, {}, False),
        "communication": (
            {},
            {
                "p2p_ns": costs["p2p_ns"],
                "control_ns": defaults["control_ns"],
                "gather_ns": defaults["gather_ns"],
            },
            False,
        ),
        "fixed per-cycle": ({}, {"fixed_cycle_ns": defaults["fixed_cycle_ns"]}, False),
        "jitter": ({}, {"jitter_cv": JITTER_CV}, False),
    }


def scenario_dict(base: dict, n: int, alpha: float, latency: dict, overheads: dict, uneven: bool) -> dict:
    layers = 32
    if uneven or layers % n:
        method = {"name": "spd", "num_stages": n, "spec_layers": 3, "stage_layers": balanced_split(layers, n)}
    else:
        method = {"name": "spd", "num_stages": n, "spec_layers": 3}
    return {
        "seed": 0,
        "model": base["model"],
        "hardware": base["hardware"],
        "method": method,
        "latency": {"kind": "constant", **latency},
        "acceptance": {"kind": "iid", "alpha": alpha},
        "overheads": overheads,
        "workload": WORKLOAD,
    }


def build_study_tasks(base: dict, costs: dict[str, int], defaults: dict):
    """(point, label, Scenario) for every dataset, n and variant."""
    settings = variant_settings(costs, defaults)
    presets = load_presets()
    ideal_latency = {"layer_ns": costs["layer_ns"]}
    tasks = []
    for dataset in DATASETS:
        alpha = get_preset(PRESET.format(dataset=dataset), presets).acceptance["alpha"]
        variants: list[tuple[str, str, dict, dict, bool]] = [
            ("ideal stages (integer split)", "ideal", ideal_latency, {}, False)
        ]
        if dataset == "overall":
            for name in OVERHEADS:
                latency, overheads, uneven = settings[name]
                variants.append((f"+ {name}", "isolated", {**ideal_latency, **latency}, overheads, uneven))
        cumulative_latency, cumulative_overheads, cumulative_uneven = dict(ideal_latency), {}, False
        for name in OVERHEADS:
            latency, overheads, uneven = settings[name]
            cumulative_latency.update(latency)
            cumulative_overheads.update(overheads)
            cumulative_uneven |= uneven
            if dataset == "overall" or name == OVERHEADS[-1]:
                label = "all overheads (... + jitter)" if name == OVERHEADS[-1] else f"... + {name}"
                variants.append(
                    (
                        label,
                        "cumulative",
                        dict(cumulative_latency),
                        dict(cumulative_overheads),
                        cumulative_uneven,
                    )
                )
        for n in STAGES:
            for label, mode, latency, overheads, uneven in variants:
                point = {"dataset": dataset, "alpha": alpha, "num_stages": n, "variant": label, "mode": mode}
                raw = scenario_dict(base, n, alpha, latency, overheads, uneven)
                tasks.append((point, label, build_scenario(raw, presets)))
    return tasks


def closed_form_rows(base_frame):
    """The theoretical line per dataset and n, in the same columns as the simulated rows."""
    import pandas as pd

    points = base_frame[["dataset", "alpha", "num_stages"]].drop_duplicates()
    n, alpha = points["num_stages"], points["alpha"]
    rows = points.assign(
        variant="closed form n/(1+(n-1)(1-a))", mode="theory", speedup=n / (1 + (n - 1) * (1 - alpha))
    )
    return pd.concat([rows, base_frame], ignore_index=True)


def plot(frame, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = frame[frame["dataset"] == "overall"]
    isolated = overall[
        overall["mode"].isin(["theory", "ideal", "isolated"])
        | (overall["variant"] == "all overheads (... + jitter)")
    ]
    plot_lines(
        isolated,
        "num_stages",
        "speedup",
        "variant",
        out_dir / "speedup_vs_n.png",
        title=f"SPD speedup vs AR, Qwen3.5-4B on H100 (roofline), alpha = {overall['alpha'].iloc[0]:.3f} (overall)",
        xlabel="pipeline stages n",
        ylabel="speedup over AR on the same hardware",
        styles={
            "closed form n/(1+(n-1)(1-a))": {"color": "black", "linestyle": "--"},
            "all overheads (... + jitter)": {"color": "red", "linewidth": 2.5},
        },
    )
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    for name, group in overall[overall["mode"].isin(["theory", "ideal", "cumulative"])].groupby(
        "variant", sort=False
    ):
        axes[0].plot(group["num_stages"], group["speedup"], marker="o", markersize=3, label=name)
    axes[0].set(
        xlabel="pipeline stages n", ylabel="speedup over AR", title="cumulative: each cost added on top"
    )
    axes[0].grid(color="#dddddd")
    axes[0].legend(frameon=False, fontsize=8)
    at8 = overall[(overall["num_stages"] == 8) & overall["mode"].isin(["theory", "ideal", "cumulative"])]
    values = at8["speedup"].tolist()
    labels = [v.replace("... + ", "+ ") for v in at8["variant"]]
    rows = list(range(len(values)))[::-1]  # first step on top
    axes[1].barh(rows[0], values[0], color="#444444")
    axes[1].text(values[0] + 0.04, rows[0], f"{values[0]:.2f}x", va="center", fontsize=9)
    for row, value, before in zip(rows[1:], values[1:], values[:-1], strict=True):
        low, high = sorted((value, before))
        axes[1].barh(row, high - low, left=low, color="#d9534f" if value < before else "#55a868")
        axes[1].barh(row, low, color="#dddddd")
        axes[1].text(high + 0.04, row, f"{value:.2f}x ({value - before:+.2f})", va="center", fontsize=9)
    axes[1].set_yticks(rows, labels)
    axes[1].set_xlim(0, max(values) * 1.25)
    axes[1].set(xlabel="speedup over AR", title="waterfall at n = 8, L_s = 3: where the speedup goes")
    axes[1].grid(axis="x", color="#dddddd")
    axes[1].set_axisbelow(True)
    fig.tight_layout()
    fig.savefig(out_dir / "waterfall.png", dpi=130, metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    default = read_scenario_file(default_scenario_path())
    base = {"model": default["model"], "hardware": default["hardware"]}
    costs = roofline_costs({**base, "latency": {"kind": "roofline"}})
    tasks = build_study_tasks(base, costs, default["overheads"])
    frame = closed_form_rows(sweep_tasks(tasks, workers=args.workers, progress=True))
    columns = [
        "dataset",
        "alpha",
        "num_stages",
        "variant",
        "mode",
        "speedup",
        "tokens_per_s",
        "tpot_ms",
        "rho",
    ]
    write_table(frame[columns], args.out / "theory_vs_practice.csv")
    plot(frame, args.out)
    shutil.copy(default_scenario_path(), args.out / "default_scenario.toml")
    meta = {
        "study": "theory_vs_practice",
        "spdsim_version": __version__,
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "base_scenario": "default_scenario.toml (model, hardware, overhead magnitudes)",
        "roofline_costs_ns": costs,
        "jitter_cv": JITTER_CV,
        "workload": WORKLOAD,
        "acceptance_presets": {d: PRESET.format(dataset=d) for d in DATASETS},
        "notes": (
            "alpha per dataset is the SPD n=8 L_s=3 implied alpha, held fixed over n. pdm_ns is the roofline's "
            "PDM (aggregation + L_s full decoder layers + a draft lm_head over method.draft_vocab_size rows, the "
            "32k draft vocabulary of the SPD checkpoints, docs/spd.md 2.3). Finite workload: 512 tokens "
            "with fill cycles."
        ),
    }
    (args.out / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"{len(frame)} rows -> {args.out}")


if __name__ == "__main__":
    main()
