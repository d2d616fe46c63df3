"""Figures of the fair hardware study (studies/fair_hardware/fair_hardware.py); the notebook draws them from the saved tables."""

from __future__ import annotations

METHOD_STYLE = {
    "SPD (best design)": {"color": "#d62728", "linewidth": 2.8, "marker": "o"},
    "AR": {"color": "#444444", "linestyle": "--", "marker": "s"},
    "EAGLE-3 K=3": {"color": "#1f77b4", "marker": "^"},
    "EAGLE-3 K=7": {"color": "#6baed6", "marker": "v"},
    "DFlash K=15": {"color": "#2ca02c", "marker": "D"},
    "P-EAGLE K=5": {"color": "#9467bd", "marker": "P"},
    "MTP K=3": {"color": "#ff7f0e", "marker": "X"},
    "SpecDec++ h=0.3": {"color": "#8c564b", "marker": "*"},
}


def figure_by_dataset(frame):
    """Speedup over 1-GPU AR against the GPU budget, one panel per dataset."""
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(frame["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets), 5.2), sharey=True, squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        data = frame[frame["dataset"] == dataset]
        for method, style in METHOD_STYLE.items():
            line = data[(data["method"] == method)].sort_values("budget")
            if len(line):
                ax.plot(line["budget"], line["speedup"], label=method, markersize=7, **style)
        authors = data[data["method"] == "SPD n=8 L_s=3 (authors')"]
        ax.plot(
            authors["gpus"],
            authors["speedup"],
            "o",
            mfc="white",
            mec="#d62728",
            mew=2,
            markersize=9,
            label="SPD n=8 L_s=3 (authors', 9 GPUs)",
        )
        ax.set_title(dataset)
        ax.set_xlabel("GPU budget g")
        ax.set_xticks([*sorted(data["budget"].unique())])
        ax.grid(color="#dddddd", linewidth=0.6)
    axes[0][0].set_ylabel("speedup over AR on 1 GPU")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, frameon=False, fontsize=9)
    fig.suptitle(
        "Same GPUs for everyone: SPD's best design vs baselines at their best TP <= g "
        "(Qwen3.5-4B, H100 roofline, DES)",
        x=0.01,
        ha="left",
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def figure_crossover(frame):
    """Heatmaps of SPD / baseline speedup over (α, g); contour at 1 = the crossover."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    alphas = sorted(frame["alpha"].unique())
    budgets = sorted(frame["budget"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(15, 6))
    for ax, column, title in (
        (axes[0], "spd_over_eagle3", "SPD best design / EAGLE-3 chain (same alpha, best K, best TP)"),
        (axes[1], "spd_over_best_published", "SPD best design / best baseline at its published acceptance"),
    ):
        grid = frame.pivot(index="alpha", columns="budget", values=column).loc[alphas, budgets].to_numpy()
        low, high = min(grid.min(), 0.95), max(grid.max(), 1.05)
        image = ax.imshow(
            grid,
            origin="lower",
            aspect="auto",
            cmap="RdBu",
            norm=TwoSlopeNorm(vcenter=1.0, vmin=low, vmax=high),
            extent=(budgets[0] - 0.5, budgets[-1] + 0.5, alphas[0] - 0.025, alphas[-1] + 0.025),
        )
        if grid.min() < 1.0 < grid.max():
            ax.contour(np.array(budgets), np.array(alphas), grid, levels=[1.0], colors="black", linewidths=2)
        for i, alpha in enumerate(alphas):
            for j, budget in enumerate(budgets):
                ax.text(
                    budget,
                    alpha,
                    f"{grid[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="white" if abs(grid[i, j] - 1.0) > 0.45 * (high - low) else "black",
                )
        ax.set_xlabel("GPU budget g (SPD: n + drafter within g)")
        ax.set_ylabel("SPD per-verification acceptance alpha (EAGLE-3 left: same alpha)")
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xticks(budgets)
        fig.colorbar(image, ax=ax, label="speedup ratio (>1: SPD wins, blue)")
    fig.suptitle(
        "Where SPD wins (closed form, Qwen3.5-4B on H100 roofline, default overheads)", x=0.01, ha="left"
    )
    fig.tight_layout()
    return fig


def ratio_heatmap(ax, values):
    """Draw speedup ratios (rows: y, columns: x) centred at 1 (blue: SPD wins), contoured at 1 where crossed."""
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    low, high = min(values.min(), 0.95), max(values.max(), 1.05)
    image = ax.imshow(values, origin="lower", aspect="auto", cmap="RdBu", norm=TwoSlopeNorm(1.0, low, high))
    if values.min() < 1.0 < values.max():
        rows, columns = values.shape
        ax.contour(np.arange(columns), np.arange(rows), values, levels=[1.0], colors="black", linewidths=2)
    return image


def figure_allreduce(frame):
    """Heatmap of SPD / EAGLE-3 (same α) over (α, TP all-reduce latency) at one GPU budget."""
    import matplotlib.pyplot as plt

    alphas = sorted(frame["alpha"].unique())
    latencies = sorted(frame["allreduce_us"].unique())
    grid = frame.pivot(index="alpha", columns="allreduce_us", values="spd_over_eagle3").loc[alphas, latencies]
    values = grid.to_numpy()
    fig, ax = plt.subplots(figsize=(9, 6))
    image = ratio_heatmap(ax, values)
    for i in range(len(alphas)):
        for j in range(len(latencies)):
            config = frame[(frame["alpha"] == alphas[i]) & (frame["allreduce_us"] == latencies[j])][
                "eagle3_config"
            ].iloc[0]
            ax.text(j, i, f"{values[i, j]:.2f}\n{config}", ha="center", va="center", fontsize=6.5)
    ax.set_xticks(range(len(latencies)), [f"{v:g}" for v in latencies])
    ax.set_yticks(range(len(alphas)), [f"{a:.2f}" for a in alphas])
    ax.set_xlabel("all-reduce latency per TP collective (us; h100 profile: 15)")
    ax.set_ylabel("acceptance alpha (SPD and EAGLE-3 alike)")
    budget = int(frame["budget"].iloc[0])
    ax.set_title(
        f"SPD best design / EAGLE-3 (best K, best TP) within {budget} GPUs; cell text: EAGLE-3's choice",
        loc="left",
        fontsize=10,
    )
    fig.colorbar(image, ax=ax, label="speedup ratio (>1: SPD wins, blue)")
    fig.tight_layout()
    return fig


def figure_acceptance(frame):
    """Heatmap of SPD (at α_SPD) / EAGLE-3 (at α_chain) within one GPU budget; contour at 1."""
    import matplotlib.pyplot as plt
    import numpy as np

    spd_alphas = sorted(frame["spd_alpha"].unique())
    chain_alphas = sorted(frame["eagle3_alpha"].unique())
    grid = frame.pivot(index="spd_alpha", columns="eagle3_alpha", values="spd_over_eagle3")
    values = grid.loc[spd_alphas, chain_alphas].to_numpy()
    fig, ax = plt.subplots(figsize=(11, 6))
    image = ratio_heatmap(ax, values)
    for i in range(len(spd_alphas)):
        for j in range(len(chain_alphas)):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7)
    inside = [j for j, a in enumerate(chain_alphas) if spd_alphas[0] <= a <= spd_alphas[-1]]
    ax.plot(
        inside,
        np.interp([chain_alphas[j] for j in inside], spd_alphas, np.arange(len(spd_alphas))),
        "--",
        color="grey",
        linewidth=1,
        label="equal acceptance",
    )
    from spdsim.scenario.presets import get_preset

    published = (
        get_preset("qwen3.5-4b/overall/spd-n8-l3").acceptance["alpha"],
        get_preset("qwen3.5-4b/overall/eagle3-k3").acceptance["alpha"],
    )
    ax.plot(
        np.interp(published[1], chain_alphas, np.arange(len(chain_alphas))),
        np.interp(published[0], spd_alphas, np.arange(len(spd_alphas))),
        "*",
        color="gold",
        markersize=18,
        markeredgecolor="black",
        label=f"implied by the SPD repo (overall): SPD {published[0]:.2f}, EAGLE-3 K=3 {published[1]:.2f}",
    )
    ax.set_xticks(range(len(chain_alphas)), [f"{a:.2f}" for a in chain_alphas])
    ax.set_yticks(range(len(spd_alphas)), [f"{a:.2f}" for a in spd_alphas])
    ax.set_xlabel("EAGLE-3 chain acceptance alpha (i.i.d.; best K and TP per cell)")
    ax.set_ylabel("SPD per-verification acceptance alpha (best design per row)")
    budget = int(frame["budget"].iloc[0])
    ax.set_title(
        f"SPD / EAGLE-3 speedup within {budget} GPUs: the acceptance advantage SPD needs (blue: SPD wins)",
        loc="left",
        fontsize=10,
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2, fontsize=8, frameon=False)
    fig.colorbar(image, ax=ax, label="speedup ratio")
    fig.tight_layout()
    return fig
