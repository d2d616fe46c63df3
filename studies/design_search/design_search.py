"""Design search: the best SPD design per hardware, model and dataset, against the authors' n = 8, L_s = 3.

For every setting (Qwen3.5-4B and -9B shapes, H100 and H200 rooflines, the four dataset presets of the SPD
repository, a GPU budget of 4 GPUs, one 8-GPU node, or none) ``spdsim.drivers.optimize.search`` prices every design (n = 2..16,
L_s = 1..6, even or balanced split, drafter on its own GPU or on stage 0) by the closed form, simulates the ten
best with the discrete-event engine and ranks them by simulated tokens/s. Acceptance per design is α(n, L_s)
fitted to the SPD presets of that model and dataset. The base is the embedded default scenario (its overheads)
plus phase jitter (cv 0.1), which only the simulation sees: the closed form prunes, the DES ranks.

    python3 studies/design_search/design_search.py        # writes studies/design_search/results/
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from spdsim.drivers.optimize import Design, SearchSpace, design_scenario, search
from spdsim.drivers.sweep import write_table
from spdsim.report.provenance import study_arguments, write_provenance
from spdsim.scenario.files import load_runs, scenario_to_run_dict
from spdsim.scenario.presets import get_hardware, get_model

OUT_DIR = Path(__file__).parent / "results"
MODELS = ("qwen3.5-4b", "qwen3.5-9b")
HARDWARE = ("h100", "h200")
DATASETS = ("overall", "mt_bench", "gsm8k", "humaneval")
BUDGETS = (4, 8, 0)  # GPUs: a 4-GPU box, one 8-GPU node, or no limit
SPACE = SearchSpace()
JITTER_CV = 0.1
FINALISTS = 10
REFERENCE = Design(8, 3, "even", "own-gpu")  # the SPD authors' preferred configuration (docs/spd.md §9.7)


def base_scenario(model: str, hardware: str, dataset: str):
    """The embedded default's SPD run on ``model``/``hardware`` with the dataset's n=8, L_s=3 preset and jitter."""
    preset = f"{model}/{dataset}/spd-n8-l3"
    scenario = load_runs([], (), preset, methods=("spd",))[0].scenario
    overheads = replace(scenario.overheads, jitter_cv=JITTER_CV)
    return replace(scenario, model=get_model(model), hardware=get_hardware(hardware), overheads=overheads)


def run_settings(models, hardware, datasets, budgets, space: SearchSpace, finalists: int, workers: int):
    """(finalist rows, candidate rows, summary rows, scenario runs) over every setting."""
    finalist_rows, candidate_rows, summary_rows, runs = [], [], [], []
    for model in models:
        for gpu in hardware:
            for dataset in datasets:
                base = base_scenario(model, gpu, dataset)
                for budget in budgets:
                    result = search(
                        base,
                        replace(space, max_gpus=budget),
                        alpha_model="fit",
                        finalists=finalists,
                        reference=REFERENCE,
                        workers=workers,
                    )
                    setting = {"model": model, "hardware": gpu, "dataset": dataset, "budget": budget}
                    finalist_rows += [{**setting, **row} for row in result.finalist_rows()]
                    reference = result.reference
                    best = result.best
                    finalist_rows.append(
                        {
                            **setting,
                            "rank": "ref",
                            **reference.row(),
                            "margin": 1.0 - reference.simulated_tokens_per_s / best.simulated_tokens_per_s,
                        }
                    )
                    candidate_rows += [{**setting, **row} for row in result.candidate_rows()]
                    summary_rows.append(
                        {
                            **setting,
                            "ar_tokens_per_s": result.ar_tokens_per_s,
                            "best_design": best.design.label,
                            "best_gpus": best.gpus,
                            "best_alpha": best.alpha,
                            "best_speedup": best.simulated_speedup,
                            "best_closed_form_speedup": best.closed_form_speedup,
                            "runner_up_margin": result.finalist_rows()[1]["margin"]
                            if len(result.finalists) > 1
                            else None,
                            "reference_gpus": reference.gpus,
                            "reference_alpha": reference.alpha,
                            "reference_speedup": reference.simulated_speedup,
                            "best_over_reference": best.simulated_tokens_per_s
                            / reference.simulated_tokens_per_s,
                            "designs_priced": len(result.candidates),
                        }
                    )
                    tag = f"{model}/{gpu}/{dataset}/budget{budget or 'none'}"
                    runs.append(
                        scenario_to_run_dict(
                            f"{tag}:best", design_scenario(base, best.design, result.alpha_fit)
                        )
                    )
                    runs.append(
                        scenario_to_run_dict(f"{tag}:ref", design_scenario(base, REFERENCE, result.alpha_fit))
                    )
    return finalist_rows, candidate_rows, summary_rows, runs


# ----------------------------------------------------------------------------------------------- figures


def outline_cell(ax, grid, cell, **style):
    """Outline the heatmap cell of ``grid`` (index L_s, columns n) at ``cell`` = (L_s, n)."""
    from matplotlib.patches import Rectangle

    x, y = list(grid.columns).index(cell[1]), list(grid.index).index(cell[0])
    ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, linewidth=3, **style))


def figure_landscape(candidates, model="qwen3.5-4b", hardware="h100", dataset="overall", budget=0):
    """Closed-form speedup over (n, L_s), best split and placement per cell; best design and reference marked."""
    import matplotlib.pyplot as plt

    data = candidates[
        (candidates["model"] == model)
        & (candidates["hardware"] == hardware)
        & (candidates["dataset"] == dataset)
        & (candidates["budget"] == budget)
    ]
    grid = data.groupby(["spec_layers", "num_stages"])["closed_form_speedup"].max().unstack()
    fig, ax = plt.subplots(figsize=(12, 4.8))
    image = ax.imshow(grid.to_numpy(), origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(grid.columns)), grid.columns)
    ax.set_yticks(range(len(grid.index)), grid.index)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            value = grid.iloc[i, j]
            ax.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="black" if value > grid.to_numpy().mean() else "white",
            )
    best = grid.stack().idxmax()
    outline_cell(ax, grid, best, edgecolor="red", label=f"closed-form best: n={best[1]}, L_s={best[0]}")
    if 8 in grid.columns and 3 in grid.index:
        outline_cell(ax, grid, (3, 8), edgecolor="cyan", linestyle="--", label="authors' n=8, L_s=3")
    ax.set_xlabel("pipeline stages n")
    ax.set_ylabel("drafter depth L_s")
    limit = "no GPU limit" if not budget else f"<= {budget} GPUs"
    ax.set_title(
        f"SPD speedup over AR (closed form, best split/placement per cell): {model} on {hardware}, "
        f"{dataset}, {limit}",
        loc="left",
        fontsize=10,
    )
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.13),
        ncol=2,
        fontsize=9,
        frameon=False,
        facecolor="#888888",
    )
    fig.colorbar(image, ax=ax, label="speedup over AR on 1 GPU")
    fig.tight_layout()
    return fig


def figure_best_vs_reference(summary, hardware: str = "h100"):
    """Per setting on one hardware: the simulated speedup of the searched design vs the authors' n=8, L_s=3."""
    import matplotlib.pyplot as plt
    import numpy as np

    shown = summary[summary["hardware"] == hardware] if hardware in set(summary["hardware"]) else summary
    order = shown["budget"].replace(0, 10**6)  # "any GPUs" last
    rows = shown.assign(order=order).sort_values(["order", "model", "dataset"]).reset_index(drop=True)
    labels = [
        f"{r.model} {r.hardware} {r.dataset} | {f'<={r.budget} GPUs' if r.budget else 'any GPUs'}"
        for r in rows.itertuples()
    ]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(12, 0.34 * len(rows) + 1.6))
    ax.barh(y + 0.2, rows["best_speedup"], height=0.4, color="#d62728", label="searched best design (DES)")
    ax.barh(
        y - 0.2,
        rows["reference_speedup"],
        height=0.4,
        color="#7f7f7f",
        label="authors' n=8, L_s=3, 9 GPUs (DES)",
    )
    for i, r in rows.iterrows():
        ax.text(
            r["best_speedup"] + 0.02,
            i + 0.2,
            f"{r['best_design']} ({r['best_gpus']} GPUs) {r['best_over_reference'] - 1:+.0%} vs authors'",
            va="center",
            fontsize=7.5,
        )
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speedup over AR on 1 GPU")
    ax.set_xlim(0, rows["best_speedup"].max() * 1.55)
    ax.grid(axis="x", color="#dddddd")
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, fontsize=9, frameon=False)
    fig.suptitle(
        f"Searched SPD design vs the authors' choice, {hardware} roofline (default overheads, jitter cv 0.1)",
        x=0.01,
        ha="left",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def run(
    out_dir: Path = OUT_DIR,
    models=MODELS,
    hardware=HARDWARE,
    datasets=DATASETS,
    budgets=BUDGETS,
    space: SearchSpace = SPACE,
    finalists: int = FINALISTS,
    workers: int = 0,
) -> dict:
    """The whole study (small grids for tests); returns the metadata it writes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    finalist_rows, candidate_rows, summary_rows, runs = run_settings(
        models, hardware, datasets, budgets, space, finalists, workers
    )
    candidates = pd.DataFrame.from_records(candidate_rows)
    summary = pd.DataFrame.from_records(summary_rows)
    write_table(pd.DataFrame.from_records(finalist_rows), out_dir / "finalists.csv")
    write_table(candidates, out_dir / "candidates.csv")
    write_table(summary, out_dir / "summary.csv")
    first = summary.iloc[0]
    figures = (
        (
            figure_landscape(candidates, first["model"], first["hardware"], first["dataset"], budgets[-1]),
            "landscape.png",
        ),
        (figure_best_vs_reference(summary), "best_vs_reference.png"),
    )
    for fig, name in figures:
        fig.savefig(out_dir / name, dpi=120, metadata={"Software": None})
        plt.close(fig)
    details = {
        "settings": {
            "models": list(models),
            "hardware": list(hardware),
            "datasets": list(datasets),
            "gpu_budgets": [b or "none" for b in budgets],
        },
        "space": {
            "stages": list(space.stages),
            "spec_layers": list(space.spec_layers),
            "placements": list(space.placements),
            "splits": list(space.splits),
        },
        "finalists_simulated": finalists,
        "jitter_cv": JITTER_CV,
        "base": "spdsim/scenarios/default.toml SPD run (roofline latency, its overheads) + jitter",
        "acceptance": "alpha(n, L_s) fitted to <model>/<dataset>/spd-n*-l* presets (spdsim.drivers.optimize.fit_alpha)",
        "scenarios": "scenarios.json: best and reference design per setting (spdsim compare scenarios.json)",
    }
    return write_provenance(out_dir, "design_search", runs, details)


def main() -> None:
    args = study_arguments(__doc__, OUT_DIR)
    run(args.out, workers=args.workers)
    print(f"design_search -> {args.out}")


if __name__ == "__main__":
    main()
