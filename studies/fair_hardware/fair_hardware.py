"""Fair hardware comparison: SPD against the SD baselines on the same number of GPUs.

SPD needs n pipeline stages plus a drafter (on its own GPU, n+1 GPUs, or sharing stage 0's GPU, n GPUs). A fair
comparison gives every baseline the same GPUs, used for tensor parallelism of the target. For a budget of g GPUs:

* SPD: the best design found by ``spdsim.drivers.optimize`` within g GPUs (n <= g, L_s 1..4, even or balanced split,
  drafter on its own GPU or on stage 0), acceptance α(n, L_s) fitted to the SPD presets of the dataset;
* every baseline (EAGLE-3 chain K = 3 and 7, DFlash K = 15, P-EAGLE K = 5, MTP K = 3, SpecDec++, and AR) at its
  best tensor-parallel degree TP in {1, 2, 4, 8} <= g (more GPUs never have to be used), acceptance from the
  presets of the same dataset where one exists (the preset used is a column of the table);
* the SPD authors' own configuration (n = 8, L_s = 3, drafter on a ninth GPU) for reference.

Every figure above is simulated (DES) on the embedded default setting: Qwen3.5-4B shape on the H100 roofline
with the default scenario's overheads. The crossover map asks where SPD wins as a function of its acceptance α
and the GPU budget g, priced by the closed forms (checked against the DES on sampled cells; the largest
deviation, about 1% from acceptance sampling over 8 x 512 tokens, is recorded in metadata.json): SPD's best design against (left) an EAGLE-3 chain with the same
i.i.d. α at its best K in 1..10 and best TP, and (right) the strongest baseline at its published acceptance.
A third map varies the latency of a tensor-parallel all-reduce (15 us in the h100 profile, an assumption) at
g = 8 GPUs (how much TP helps the baselines; SPD only sends point to point), and a fourth pits SPD at α_SPD
against EAGLE-3 at its own α_chain: the acceptance advantage SPD needs to win.

    python3 studies/fair_hardware/fair_hardware.py        # writes studies/fair_hardware/results/
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

from fair_hardware_figures import (  # beside this script
    figure_acceptance,
    figure_allreduce,
    figure_by_dataset,
    figure_crossover,
)

from spdsim.drivers.optimize import SearchSpace, closed_form_candidate, enumerate_designs, fit_alpha, search
from spdsim.drivers.sweep import simulate_many, write_table
from spdsim.engine.closed_form import predict
from spdsim.report.compare import baseline_scenario
from spdsim.report.provenance import study_arguments, write_provenance
from spdsim.scenario.config import AcceptanceSpec, MethodSpec, Scenario
from spdsim.scenario.files import load_runs, scenario_to_run_dict
from spdsim.scenario.presets import get_preset

OUT_DIR = Path(__file__).parent / "results"
DATASETS = ("overall", "mt_bench", "gsm8k", "humaneval")
GPU_BUDGETS = (2, 4, 8)
TP_DEGREES = (1, 2, 4, 8, 16)
SPD_SPEC_LAYERS = (1, 2, 3, 4)
MAP_ALPHAS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
MAP_BUDGETS = tuple(range(2, 17))
CHAIN_K = tuple(range(1, 11))
ALLREDUCE_US = (0, 5, 15, 30, 50, 100, 200)
CHAIN_ALPHAS = tuple(round(0.3 + 0.05 * i, 2) for i in range(13))

# baseline label -> (method fields, {dataset: preset}); datasets without a preset of their own use the
# closest published one (named in the table); "overall" P-EAGLE is the mean alpha of its three datasets.
BASELINES: dict[str, tuple[dict, dict[str, str]]] = {
    "EAGLE-3 K=3": (
        {"name": "eagle3", "draft_tokens": 3, "draft_layers": 1},
        {d: f"qwen3.5-4b/{d}/eagle3-k3" for d in DATASETS},
    ),
    "EAGLE-3 K=7": (
        {"name": "eagle3", "draft_tokens": 7, "draft_layers": 1},
        {d: f"qwen3.5-4b/{d}/eagle3-k7" for d in DATASETS},
    ),
    "DFlash K=15": (
        {"name": "dflash", "draft_tokens": 15, "draft_layers": 1},
        dict.fromkeys(DATASETS, "qwen3-8b/overall/dflash-k15"),
    ),
    "P-EAGLE K=5": (
        {"name": "peagle", "draft_tokens": 5, "draft_layers": 4},
        {
            "overall": "mean:gpt-oss-120b/{mt_bench|humaneval|gsm8k}/peagle-k5",
            **{d: f"gpt-oss-120b/{d}/peagle-k5" for d in DATASETS[1:]},
        },
    ),
    "MTP K=3": (
        {"name": "mtp", "draft_tokens": 3, "draft_layers": 1},
        dict.fromkeys(DATASETS, "qwen3.5-9b/gsm8k/mtp-k3"),
    ),
    "SpecDec++ h=0.3": (
        {"name": "specdecpp", "draft_layers": 4, "stop_threshold": 0.3, "k_min": 2, "k_max": 20},
        {
            "overall": "llama2-7b-70b/alpaca/specdecpp",
            "mt_bench": "llama2-7b-70b/alpaca/specdecpp",
            "gsm8k": "llama2-7b-70b/gsm8k/specdecpp",
            "humaneval": "llama2-7b-70b/humaneval/specdecpp",
        },
    ),
}


def preset_acceptance(name: str) -> AcceptanceSpec:
    """An embedded preset as an AcceptanceSpec; ``mean:`` averages the alphas of the listed presets."""
    if name.startswith("mean:"):
        pattern = name[len("mean:") :]
        head, rest = pattern.split("{", 1)
        choices, tail = rest.split("}", 1)
        alphas = [get_preset(head + choice + tail).acceptance["alpha"] for choice in choices.split("|")]
        alpha = statistics.fmean(alphas)
        return AcceptanceSpec(kind="iid", alpha=alpha, alpha_saturated=alpha, alpha_refill=alpha)
    fields = dict(get_preset(name).acceptance)
    if "rates" in fields:
        fields["rates"] = tuple(fields["rates"])
    return AcceptanceSpec(**{"kind": "iid", **fields, "preset": name})


def base_scenario(dataset: str) -> Scenario:
    """The embedded default's SPD run with the dataset's SPD n=8, L_s=3 preset."""
    preset = f"qwen3.5-4b/{dataset}/spd-n8-l3"
    return load_runs([], (), preset, methods=("spd",))[0].scenario


def baseline_runs(base: Scenario, dataset: str, budgets) -> list[tuple[dict, Scenario]]:
    """(row fields, scenario) for AR and every baseline at every TP degree that fits the largest budget."""
    runs = []
    tps = [tp for tp in TP_DEGREES if tp <= max(budgets)]
    for tp in tps:
        method = MethodSpec(name="ar", tensor_parallel=tp)
        runs.append(
            ({"method": "AR", "preset": ""}, replace(base, method=method, acceptance=AcceptanceSpec()))
        )
    for label, (fields, presets) in BASELINES.items():
        acceptance = preset_acceptance(presets[dataset])
        for tp in tps:
            method = MethodSpec(**fields, tensor_parallel=tp)
            scenario = replace(base, method=method, acceptance=acceptance)
            runs.append(({"method": label, "preset": presets[dataset]}, scenario))
    return runs


def compare_datasets(datasets, budgets, workers: int):
    """Rows: per dataset, GPU budget and method, the best simulated configuration within the budget."""
    import pandas as pd

    rows, scenarios_out = [], []
    for dataset in datasets:
        base = base_scenario(dataset)
        runs = baseline_runs(base, dataset, budgets)
        simulated = simulate_many([baseline_scenario(base), *(s for _, s in runs)], workers=workers)
        ar_tokens_per_s = simulated[0]["tokens_per_s"]
        table = []
        for (fields, scenario), row in zip(runs, simulated[1:], strict=True):
            table.append(
                {
                    "dataset": dataset,
                    **fields,
                    "gpus": row["gpus"],
                    "tp": scenario.method.tensor_parallel,
                    "config": f"TP={scenario.method.tensor_parallel}",
                    "alpha": scenario.acceptance.alpha
                    if scenario.acceptance.kind == "iid" and fields["method"] != "AR"
                    else float("nan"),
                    "tokens_per_s": row["tokens_per_s"],
                    "speedup": row["tokens_per_s"] / ar_tokens_per_s,
                    "mean_acceptance_length": row["mean_acceptance_length"],
                }
            )
            scenarios_out.append(
                (f"{dataset}:{fields['method']}:tp{scenario.method.tensor_parallel}", scenario)
            )
        for budget in budgets:
            for method in dict.fromkeys(r["method"] for r in table):
                fitting = [r for r in table if r["method"] == method and r["gpus"] <= budget]
                rows.append({**max(fitting, key=lambda r: r["tokens_per_s"]), "budget": budget})
            space = SearchSpace(
                stages=tuple(range(2, budget + 1)), spec_layers=SPD_SPEC_LAYERS, max_gpus=budget
            )
            result = search(base, space, alpha_model="fit", finalists=3, workers=workers)
            best = result.best
            rows.append(
                {
                    "dataset": dataset,
                    "method": "SPD (best design)",
                    "preset": f"fit to qwen3.5-4b/{dataset}/spd-n*-l*",
                    "gpus": best.gpus,
                    "tp": 1,
                    "config": best.design.label,
                    "alpha": best.alpha,
                    "tokens_per_s": best.simulated_tokens_per_s,
                    "speedup": best.simulated_tokens_per_s / ar_tokens_per_s,
                    "mean_acceptance_length": 1.0,
                    "budget": budget,
                }
            )
            scenarios_out.append((f"{dataset}:spd-best:{budget}gpus", _design_scenario(base, best, result)))
        authors = replace(
            base,
            method=replace(
                base.method, num_stages=8, spec_layers=3, stage_layers=(), drafter_placement="own-gpu"
            ),
        )
        row = simulate_many([authors], workers=1)[0]
        rows.append(
            {
                "dataset": dataset,
                "method": "SPD n=8 L_s=3 (authors')",
                "preset": base.acceptance.preset,
                "gpus": row["gpus"],
                "tp": 1,
                "config": "n8 L_s3 even own-gpu",
                "alpha": base.acceptance.alpha,
                "tokens_per_s": row["tokens_per_s"],
                "speedup": row["tokens_per_s"] / ar_tokens_per_s,
                "mean_acceptance_length": 1.0,
                "budget": row["gpus"],
            }
        )
        scenarios_out.append((f"{dataset}:spd-n8-l3-authors", authors))
    return pd.DataFrame.from_records(rows), scenarios_out


def _design_scenario(base: Scenario, candidate, result) -> Scenario:
    from spdsim.drivers.optimize import design_scenario

    return design_scenario(base, candidate.design, result.alpha_fit)


def crossover_map(alphas, budgets):
    """Closed-form SPD best design vs EAGLE-3 chain (same α) and vs the best published baseline, per (α, g)."""
    import pandas as pd

    base = base_scenario("overall")
    ar_tokens_per_s = predict(baseline_scenario(base)).tokens_per_s
    published = _published_best(base, budgets)
    fit = fit_alpha(base.acceptance.preset)
    rows = []
    for budget in budgets:
        designs = enumerate_designs(
            base,
            SearchSpace(stages=tuple(range(2, budget + 1)), spec_layers=SPD_SPEC_LAYERS, max_gpus=budget),
        )
        for alpha in alphas:
            acceptance = AcceptanceSpec(kind="iid", alpha=alpha, alpha_saturated=alpha, alpha_refill=alpha)
            fixed = replace(base, acceptance=acceptance)
            spd = max(
                (closed_form_candidate(fixed, d, None) for d in designs),
                key=lambda c: c.closed_form_tokens_per_s,
            )
            chain_best, chain_config = best_eagle3(fixed, budget)
            rows.append(
                {
                    "alpha": alpha,
                    "budget": budget,
                    "spd_design": spd.design.label,
                    "spd_num_stages": spd.design.num_stages,
                    "spd_spec_layers": spd.design.spec_layers,
                    "spd_stage_layers": "/".join(map(str, spd.design.stage_layers)),
                    "spd_placement": spd.design.drafter_placement,
                    "spd_gpus": spd.gpus,
                    "spd_speedup": spd.closed_form_tokens_per_s / ar_tokens_per_s,
                    "eagle3_same_alpha_config": chain_config,
                    "eagle3_same_alpha_speedup": chain_best / ar_tokens_per_s,
                    "best_published_method": published[budget][1],
                    "best_published_speedup": published[budget][0] / ar_tokens_per_s,
                }
            )
    frame = pd.DataFrame.from_records(rows)
    frame["spd_over_eagle3"] = frame["spd_speedup"] / frame["eagle3_same_alpha_speedup"]
    frame["spd_over_best_published"] = frame["spd_speedup"] / frame["best_published_speedup"]
    return frame, fit


def best_eagle3(scenario: Scenario, budget: int) -> tuple[float, str]:
    """Closed-form tokens/s of the fastest EAGLE-3 chain (K in 1..10, TP <= budget) at the scenario's α."""
    best, config = 0.0, ""
    for tp in (t for t in TP_DEGREES if t <= budget):
        for k in CHAIN_K:
            method = MethodSpec(name="eagle3", draft_tokens=k, draft_layers=1, tensor_parallel=tp)
            tokens_per_s = predict(replace(scenario, method=method)).tokens_per_s
            if tokens_per_s > best:
                best, config = tokens_per_s, f"K={k} TP={tp}"
    return best, config


def crossover_acceptance(spd_alphas, chain_alphas, budget: int):
    """SPD best design at α_SPD / EAGLE-3 chain at α_chain (best K and TP), both within ``budget`` GPUs.

    SPD's claim is an acceptance advantage (one token ahead from deep features); this map shows how large it
    must be for SPD to win.
    """
    import pandas as pd

    base = base_scenario("overall")
    designs = enumerate_designs(
        base, SearchSpace(stages=tuple(range(2, budget + 1)), spec_layers=SPD_SPEC_LAYERS, max_gpus=budget)
    )
    spd = {}
    for alpha in spd_alphas:
        acceptance = AcceptanceSpec(kind="iid", alpha=alpha, alpha_saturated=alpha, alpha_refill=alpha)
        fixed = replace(base, acceptance=acceptance)
        best = max(
            (closed_form_candidate(fixed, d, None) for d in designs), key=lambda c: c.closed_form_tokens_per_s
        )
        spd[alpha] = best
    rows = []
    for chain_alpha in chain_alphas:
        acceptance = AcceptanceSpec(kind="iid", alpha=chain_alpha)
        chain, config = best_eagle3(replace(base, acceptance=acceptance), budget)
        for alpha, best in spd.items():
            rows.append(
                {
                    "spd_alpha": alpha,
                    "eagle3_alpha": chain_alpha,
                    "budget": budget,
                    "spd_design": best.design.label,
                    "eagle3_config": config,
                    "spd_over_eagle3": best.closed_form_tokens_per_s / chain,
                }
            )
    return pd.DataFrame.from_records(rows)


def crossover_allreduce(alphas, allreduce_us, budget: int):
    """SPD best design / EAGLE-3 (same α, best K and TP) at ``budget`` GPUs against the all-reduce latency.

    Tensor parallelism pays two all-reduces per layer; their latency (``hardware.allreduce_latency_ns``, 15 us in
    the h100 profile, an assumption) decides how much TP helps the baselines. SPD uses point-to-point sends only.
    """
    import pandas as pd

    base = base_scenario("overall")
    ar_tokens_per_s = predict(baseline_scenario(base)).tokens_per_s
    designs = enumerate_designs(
        base, SearchSpace(stages=tuple(range(2, budget + 1)), spec_layers=SPD_SPEC_LAYERS, max_gpus=budget)
    )
    rows = []
    for alpha in alphas:
        acceptance = AcceptanceSpec(kind="iid", alpha=alpha, alpha_saturated=alpha, alpha_refill=alpha)
        fixed = replace(base, acceptance=acceptance)
        spd = max(
            (closed_form_candidate(fixed, d, None) for d in designs), key=lambda c: c.closed_form_tokens_per_s
        )
        for latency_us in allreduce_us:
            hardware = replace(base.hardware, allreduce_latency_ns=int(latency_us * 1000))
            chain, config = best_eagle3(replace(fixed, hardware=hardware), budget)
            rows.append(
                {
                    "alpha": alpha,
                    "allreduce_us": latency_us,
                    "budget": budget,
                    "spd_design": spd.design.label,
                    "spd_speedup": spd.closed_form_tokens_per_s / ar_tokens_per_s,
                    "eagle3_config": config,
                    "eagle3_speedup": chain / ar_tokens_per_s,
                    "spd_over_eagle3": spd.closed_form_tokens_per_s / chain,
                }
            )
    return pd.DataFrame.from_records(rows)


def _published_best(base: Scenario, budgets) -> dict[int, tuple[float, str]]:
    """Per budget: the fastest baseline (closed form) at its 'overall' preset and best TP within the budget."""
    best = {}
    for budget in budgets:
        top = (0.0, "")
        for label, (fields, presets) in BASELINES.items():
            acceptance = preset_acceptance(presets["overall"])
            for tp in (t for t in TP_DEGREES if t <= budget):
                scenario = replace(
                    base, method=MethodSpec(**fields, tensor_parallel=tp), acceptance=acceptance
                )
                top = max(top, (predict(scenario).tokens_per_s, f"{label} TP={tp}"))
        best[budget] = top
    return best


def check_closed_form(cells, workers: int) -> float:
    """Largest |DES / closed form - 1| of SPD's best design over a few map cells (no jitter in this setting)."""
    from spdsim.drivers.optimize import Design, design_scenario

    base = base_scenario("overall")
    scenarios = []
    for _, cell in cells.iterrows():
        alpha = float(cell["alpha"])
        acceptance = AcceptanceSpec(kind="iid", alpha=alpha, alpha_saturated=alpha, alpha_refill=alpha)
        layers = (
            tuple(int(v) for v in str(cell["spd_stage_layers"]).split("/"))
            if cell["spd_stage_layers"]
            else ()
        )
        design = Design(
            int(cell["spd_num_stages"]),
            int(cell["spd_spec_layers"]),
            "balanced" if layers else "even",
            cell["spd_placement"],
            layers,
        )
        scenarios.append(design_scenario(replace(base, acceptance=acceptance), design))
    rows = simulate_many(scenarios, workers=workers)
    return max(abs(row["tokens_per_s"] / row["closed_form_tokens_per_s"] - 1.0) for row in rows)


def save(fig, path: Path) -> None:
    fig.savefig(path, dpi=120, metadata={"Software": None})


def run(
    out_dir: Path = OUT_DIR,
    datasets=DATASETS,
    budgets=GPU_BUDGETS,
    map_alphas=MAP_ALPHAS,
    map_budgets=MAP_BUDGETS,
    allreduce_us=ALLREDUCE_US,
    allreduce_budget: int = 8,
    chain_alphas=CHAIN_ALPHAS,
    workers: int = 0,
) -> dict:
    """The whole study (small grids for tests); returns the metadata it writes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    comparison, scenarios = compare_datasets(datasets, budgets, workers)
    write_table(comparison, out_dir / "comparison.csv")
    crossover, fit = crossover_map(map_alphas, map_budgets)
    write_table(crossover, out_dir / "crossover.csv")
    allreduce = crossover_allreduce(map_alphas, allreduce_us, allreduce_budget)
    write_table(allreduce, out_dir / "crossover_allreduce.csv")
    acceptance_gap = crossover_acceptance(map_alphas, chain_alphas, allreduce_budget)
    write_table(acceptance_gap, out_dir / "crossover_acceptance.csv")
    sample = crossover.iloc[:: max(1, len(crossover) // 8)]
    deviation = check_closed_form(sample, workers)
    for fig, name in (
        (figure_by_dataset(comparison), "by_dataset.png"),
        (figure_crossover(crossover), "crossover.png"),
        (figure_allreduce(allreduce), "crossover_allreduce.png"),
        (figure_acceptance(acceptance_gap), "crossover_acceptance.png"),
    ):
        save(fig, out_dir / name)
        plt.close(fig)
    runs = [scenario_to_run_dict(label, scenario) for label, scenario in scenarios]
    details = {
        "setting": "qwen3.5-4b on h100, roofline latency, overheads of spdsim/scenarios/default.toml",
        "scenarios": "scenarios.json: every simulated run (spdsim compare scenarios.json reproduces a row)",
        "gpu_budgets": list(budgets),
        "map": {"alphas": list(map_alphas), "budgets": list(map_budgets), "priced_by": "closed form"},
        "allreduce_map": {"allreduce_us": list(allreduce_us), "budget": allreduce_budget},
        "acceptance_map": {
            "eagle3_alphas": list(chain_alphas),
            "spd_alphas": list(map_alphas),
            "budget": allreduce_budget,
        },
        "map_closed_form_vs_des_max_abs_deviation": float(deviation),
        "spd_alpha_fit": {
            "intercept": fit.intercept,
            "per_doubling": fit.per_doubling,
            "per_spec_layer": fit.per_spec_layer,
            "presets": fit.source,
        },
    }
    return write_provenance(out_dir, "fair_hardware", runs, details)


def main() -> None:
    args = study_arguments(__doc__, OUT_DIR)
    meta = run(args.out, workers=args.workers)
    print(
        f"fair_hardware -> {args.out} (closed form vs DES on map cells: {meta['map_closed_form_vs_des_max_abs_deviation']:.2%})"
    )


if __name__ == "__main__":
    main()
