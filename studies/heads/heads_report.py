"""Issue 4 report: plots and a summary table from `spdsim exec eval` folders (trained heads on a real model).

    python studies/heads/heads_report.py studies/heads/results/eval_* --out studies/heads/results

Writes ``summary.csv`` / ``summary.md`` (every row of every folder, with the folder's device and date) and:
- ``spd_alpha_vs_n.png``: SPD per-verification α (saturated, and after refill) against n, one line per L_s and
  dataset — the "bounded difficulty" claim says α stays roughly flat in n;
- ``chain_rk_vs_position.png``: EAGLE-3 unconditional r_k against position k (longest K per dataset);
- ``specdecpp_stop_lengths.png``: distribution of the chain length SpecDec++ stopped at, per threshold h.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def read_folders(folders: list[Path]) -> list[dict]:
    rows = []
    for folder in folders:
        path = Path(folder) / "eval.json"
        if not path.is_file():
            raise SystemExit(f"error: '{folder}' has no eval.json (not an `spdsim exec eval` folder)")
        payload = json.loads(path.read_text())
        head_config = payload["config"].get("head_config", {})
        for row in payload["rows"]:
            rows.append(
                {
                    **row,
                    "folder": str(folder),
                    "spec_layers": head_config.get("num_spec_layers"),
                    "device": payload["environment"].get("device"),
                    "date_utc": payload["environment"].get("date_utc"),
                }
            )
    return rows


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None


def plot_spd_alpha(rows: list[dict], path: Path) -> bool:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    spd = [r for r in rows if r["method"] == "spd" and float(r["temperature"]) == 0.0]
    if not spd:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, state in zip(axes, ("saturated", "refill"), strict=True):
        series: dict[tuple, list[tuple[int, float]]] = {}
        for r in spd:
            alpha = _float(r[f"alpha_{state}"])
            if alpha is not None:
                series.setdefault((r["dataset"], r["spec_layers"]), []).append((int(r["width"]), alpha))
        for (dataset, layers), points in sorted(series.items(), key=lambda kv: str(kv[0])):
            points.sort()
            ax.plot(
                [p[0] for p in points], [p[1] for p in points], marker="o", label=f"{dataset}, L_s={layers}"
            )
        ax.set_title(f"SPD α per verification ({state}), T=0")
        ax.set_xlabel("pipeline stages n")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("α")
    axes[0].set_ylim(0, 1)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_chain_rates(rows: list[dict], path: Path) -> bool:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    chains = [r for r in rows if r["method"] == "eagle3" and r.get("r_k")]
    if not chains:
        return False
    longest: dict[tuple, dict] = {}
    for r in chains:
        key = (r["dataset"], float(r["temperature"]))
        if key not in longest or int(r["width"]) > int(longest[key]["width"]):
            longest[key] = r
    fig, ax = plt.subplots(figsize=(6, 4))
    for (dataset, temperature), r in sorted(longest.items()):
        rates = [float(x) for x in str(r["r_k"]).split(";") if x]
        ax.plot(
            range(1, len(rates) + 1),
            rates,
            marker="o",
            label=f"{dataset}, T={temperature:g} (K={r['width']})",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("draft position k")
    ax.set_ylabel("unconditional r_k")
    ax.set_ylim(0, 1)
    ax.set_title("EAGLE-3 chain: acceptance by position")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def stop_lengths(folder: Path, trace: str) -> list[int]:
    """Chain length of every verification of a SpecDec++ trace (its `width` column)."""
    lengths = {}
    with (Path(folder) / trace).open() as handle:
        for row in csv.DictReader(handle):
            lengths[(row["prompt_id"], row["verify_index"])] = int(row["width"])
    return list(lengths.values())


def plot_stop_lengths(rows: list[dict], path: Path) -> bool:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    runs = [r for r in rows if r["method"] == "specdecpp"]
    if not runs:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in sorted(runs, key=lambda r: (r["label"], r["dataset"], float(r["temperature"]))):
        lengths = stop_lengths(r["folder"], r["trace"])
        top = max(lengths)
        counts = [lengths.count(k) / len(lengths) for k in range(1, top + 1)]
        label = f"{r['label']}, {r['dataset']}, T={float(r['temperature']):g} (mean {sum(lengths) / len(lengths):.2f})"
        ax.plot(range(1, top + 1), counts, marker="o", label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("drafts per verification (stopping length)")
    ax.set_ylabel("fraction of verifications")
    ax.set_title("SpecDec++ stopping length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


SUMMARY_COLUMNS = (
    "label",
    "dataset",
    "temperature",
    "acceptance_rate",
    "mean_acceptance_length",
    "r_k",
    "alpha_saturated",
    "alpha_refill",
    "rho",
    "n_rho",
    "mean_draft_length",
    "lossless_prompts",
    "lossless_checked",
    "prompts",
    "device",
    "date_utc",
)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)


def write_summary(rows: list[dict], out: Path) -> None:
    with (out / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "| " + " | ".join(SUMMARY_COLUMNS) + " |",
        "| " + " | ".join("---" for _ in SUMMARY_COLUMNS) + " |",
    ]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in SUMMARY_COLUMNS) + " |" for r in rows]
    (out / "summary.md").write_text(
        "# Trained heads on a real model: measured acceptance\n\n" + "\n".join(lines) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(description="Plots and summary of issue 4 head evaluations")
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("studies/heads/results"))
    args = parser.parse_args(argv)
    rows = read_folders(args.folders)
    args.out.mkdir(parents=True, exist_ok=True)
    write_summary(rows, args.out)
    drawn = {
        "spd_alpha_vs_n.png": plot_spd_alpha(rows, args.out / "spd_alpha_vs_n.png"),
        "chain_rk_vs_position.png": plot_chain_rates(rows, args.out / "chain_rk_vs_position.png"),
        "specdecpp_stop_lengths.png": plot_stop_lengths(rows, args.out / "specdecpp_stop_lengths.png"),
    }
    print(f"{len(rows)} rows; plots: {', '.join(name for name, done in drawn.items() if done) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
