"""SPD at scale on H200 nodes with a graph-captured executor (issue 14, item 8): n in {2, 4, 8, 16}, drafter on its
own GPU or co-located with stage 0, one node (NVL8; a 9th+ rank spills over 400 Gb/s) or two nodes joined by
100 / 200 / 400 Gb/s. Qwen3.5-4B shape, L_s = min(3, L/n - 1) (>= 1), α = 0.80 (the authors' n = 8 overall),
host 10 µs per graph launch and per message (assumed). At what n and network does SPD stop paying?

    PYTHONPATH=. python studies/scale_h200/predict.py      # writes studies/scale_h200/results/
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from spdsim.engine.closed_form import predict  # noqa: E402
from spdsim.scenario.files import build_scenario  # noqa: E402

OUT = Path(__file__).parent / "results"
HARDWARE = {
    "1 node (NVL8)": "h200-nvl8",
    "2 nodes 100G": "h200-2node-100g",
    "2 nodes 200G": "h200-2node-200g",
    "2 nodes 400G": "h200-2node-400g",
}
STAGES = (2, 4, 8, 16)
PLACEMENTS = ("own-gpu", "stage0")


def spread(n: int, per_node: int, nodes: int) -> tuple[int, ...]:
    """Two-node placement: ranks split evenly over ``nodes`` (the 1-node preset packs instead)."""
    total = n + per_node
    return tuple(min(r * nodes // total, nodes - 1) for r in range(total))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rows, runs = [], []
    for label, hw in HARDWARE.items():
        for placement in PLACEMENTS:
            for n in STAGES:
                method = {
                    "name": "spd",
                    "num_stages": n,
                    "spec_layers": max(1, min(3, 32 // n - 1)),
                    "drafter_placement": placement,
                    "aggregation_types": 5,
                }
                if label.startswith("2 nodes"):
                    method["rank_nodes"] = list(spread(n, 1 if placement == "own-gpu" else 0, 2))
                raw = {
                    "model": "qwen3.5-4b",
                    "hardware": hw,
                    "method": method,
                    "acceptance": {"kind": "iid", "alpha": 0.8},
                    "workload": {"prompt_tokens": 128, "new_tokens": 512, "num_requests": 1},
                }
                p = predict(build_scenario(raw))
                rows.append(
                    {
                        "hardware": label,
                        "placement": placement,
                        "n": n,
                        "spec_layers": method["spec_layers"],
                        "gpus": p.gpus,
                        "speedup": round(p.speedup, 3),
                        "cycle_ms": round(p.iteration_ns / 1e6, 4),
                        "n_rho": round(p.n_rho, 3),
                    }
                )
                runs.append({"label": f"{hw}-{placement}-n{n}", **raw})
    with open(OUT / "scale_h200.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (OUT / "scenarios.json").write_text(json.dumps({"name": "scale_h200", "runs": runs}, indent=1) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, placement in zip(axes, PLACEMENTS, strict=True):
        for label in HARDWARE:
            ys = [r["speedup"] for r in rows if r["hardware"] == label and r["placement"] == placement]
            ax.plot(STAGES, ys, marker="o", label=label)
        ax.axhline(1.0, color="k", lw=0.6)
        ax.set(
            xscale="log",
            xticks=STAGES,
            xticklabels=[str(s) for s in STAGES],
            xlabel="stages n",
            title=f"drafter: {placement}",
        )
    axes[0].set_ylabel("speedup over AR (1 H200)")
    axes[1].legend(fontsize=8)
    fig.suptitle("SPD on H200, graph-captured, Qwen3.5-4B, alpha = 0.8", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT / "speedup_vs_n.png", dpi=120, metadata={"Software": None})
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
