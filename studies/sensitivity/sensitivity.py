"""Sensitivity: how much each latency and acceptance parameter moves the speedup (±20%, tornado charts).

Base: the embedded default setting (Qwen3.5-4B shape, H100 roofline, default overheads) plus phase jitter
(cv 0.1), for three configurations: SPD as the authors run it (n = 8, L_s = 3, drafter on its own GPU: 9 GPUs),
the design ``spdsim optimize`` picks for this setting within 8 GPUs (searched when the study runs), and an EAGLE-3
chain (K = 3, one GPU) for contrast; acceptance from the "overall" presets (SPD: the α(n, L_s) fit of
``spdsim.drivers.optimize``). To move one phase at a time, the roofline is frozen into
constant phase latencies at the mid-request KV length (layer, embedding, lm_head + verify, PDM, chain draft step,
hidden-state send); the frozen base reproduces the roofline's simulated speedup (both in the table). Each
parameter is then set to 0.8x and 1.2x of its base value (α capped at 1) and the scenario is simulated (DES,
same seed: common random numbers) against AR with the same parameters.

    python3 studies/sensitivity/sensitivity.py        # writes studies/sensitivity/results/
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from spdsim.drivers.optimize import fit_alpha
from spdsim.drivers.sweep import simulate_many, write_table
from spdsim.latency.build import build_latency_model
from spdsim.report.compare import baseline_scenario
from spdsim.report.provenance import study_arguments, write_provenance
from spdsim.scenario.config import AcceptanceSpec, LatencySpec, MethodSpec, Scenario
from spdsim.scenario.files import load_runs, scenario_to_run_dict
from spdsim.scenario.presets import get_preset

OUT_DIR = Path(__file__).parent / "results"
STEP = 0.2
JITTER_CV = 0.1
CONFIGS = {
    "SPD n=8 L_s=3 (authors')": (
        MethodSpec(name="spd", num_stages=8, spec_layers=3, drafter_placement="own-gpu"),
        "qwen3.5-4b/overall/spd-n8-l3",
    ),
    "SPD best within 8 GPUs (optimize)": (None, "qwen3.5-4b/overall/spd-n8-l3"),  # None: searched at run time
    "EAGLE-3 chain K=3": (
        MethodSpec(name="eagle3", draft_tokens=3, draft_layers=1),
        "qwen3.5-4b/overall/eagle3-k3",
    ),
}
# parameter label -> (section, field); "1 - alpha" moves the rejection rate instead of alpha
PARAMETERS = {
    "target layer time": ("latency", "layer_ns"),
    "embedding": ("latency", "embed_ns"),
    "lm_head + verify": ("latency", "head_ns"),
    "PDM forward (SPD drafter)": ("latency", "pdm_ns"),
    "chain draft step": ("latency", "draft_step_ns"),
    "extra verify query token": ("latency", "per_query_token_ns"),
    "hidden-state send": ("overheads", "p2p_ns"),
    "control broadcast": ("overheads", "control_ns"),
    "anchor gather": ("overheads", "gather_ns"),
    "fixed per-cycle": ("overheads", "fixed_cycle_ns"),
    "jitter cv": ("overheads", "jitter_cv"),
    "acceptance alpha": ("acceptance", "alpha"),
    "rejection rate 1 - alpha": ("acceptance", "1 - alpha"),
}


def roofline_base(method: MethodSpec, preset: str) -> Scenario:
    """The default setting running ``method`` with the preset's acceptance and jitter (roofline latency)."""
    scenario = load_runs([], (), None, methods=("spd",))[0].scenario
    alpha = get_preset(preset).acceptance["alpha"]
    if method.name == "spd":  # the SPD family's α(n, L_s) fit, as in the design search
        alpha = fit_alpha(preset).alpha(method.num_stages, method.spec_layers)
    return replace(
        scenario,
        method=method,
        acceptance=AcceptanceSpec(
            kind="iid", alpha=alpha, alpha_saturated=alpha, alpha_refill=alpha, preset=preset
        ),
        overheads=replace(scenario.overheads, jitter_cv=JITTER_CV),
    )


def optimized_method(preset: str, max_gpus: int = 8) -> MethodSpec:
    """The SPD design ``spdsim.drivers.optimize.search`` ranks first for the default setting within ``max_gpus``."""
    from spdsim.drivers.optimize import SearchSpace, search

    base = roofline_base(MethodSpec(name="spd"), preset)
    best = search(base, SearchSpace(max_gpus=max_gpus), alpha_model="fit", finalists=5).best.design
    return replace(
        base.method,
        num_stages=best.num_stages,
        spec_layers=best.spec_layers,
        stage_layers=best.stage_layers,
        drafter_placement=best.drafter_placement,
    )


def frozen(scenario: Scenario) -> Scenario:
    """``scenario`` with its roofline phase latencies frozen into constants at the mid-request KV length."""
    latency = build_latency_model(scenario)
    workload = scenario.workload
    kv = workload.prompt_tokens + workload.new_tokens // 2
    method = scenario.method
    layers = latency.num_layers
    verify_queries = method.draft_tokens + 1
    one = float(latency.layers_ns(layers, 1, kv))
    extra = (float(latency.layers_ns(layers, verify_queries, kv)) - one) / max(verify_queries - 1, 1)
    spec = LatencySpec(
        kind="constant",
        layer_ns=int(round(one / layers)),
        embed_ns=int(latency.embed_ns(1)),
        head_ns=int(latency.head_ns(1)),
        pdm_ns=int(latency.pdm_ns(method.spec_layers, method.num_stages + 1, kv)),
        draft_step_ns=int(latency.chain_draft_ns(method.draft_layers, kv)),
        per_query_token_ns=int(round(extra)),
    )
    send = int(latency.p2p_ns(latency.hidden_bytes(1)))
    overheads = replace(scenario.overheads, p2p_ns=scenario.overheads.p2p_ns + send)
    return replace(scenario, latency=spec, overheads=overheads)


def perturbed(scenario: Scenario, parameter: str, factor: float) -> tuple[Scenario, float]:
    """``scenario`` with one parameter scaled by ``factor``; returns it and the parameter's new value."""
    section, name = PARAMETERS[parameter]
    if section == "acceptance":
        alpha = scenario.acceptance.alpha
        if name == "alpha":
            value = new_alpha = min(1.0, alpha * factor)
        else:
            value = min(1.0, (1.0 - alpha) * factor)
            new_alpha = 1.0 - value
        acceptance = replace(
            scenario.acceptance, alpha=new_alpha, alpha_saturated=new_alpha, alpha_refill=new_alpha
        )
        return replace(scenario, acceptance=acceptance), value
    block = getattr(scenario, section)
    base = getattr(block, name)
    value = base * factor if isinstance(base, float) else int(round(base * factor))
    return replace(scenario, **{section: replace(block, **{name: value})}), value


def base_value(scenario: Scenario, parameter: str) -> float:
    section, name = PARAMETERS[parameter]
    if section == "acceptance":
        return scenario.acceptance.alpha if name == "alpha" else 1.0 - scenario.acceptance.alpha
    return getattr(getattr(scenario, section), name)


def study_rows(configs, parameters, step: float, workers: int):
    """One row per configuration and parameter: base, low and high values and speedups (DES)."""
    import pandas as pd

    jobs = []  # (config, parameter, side, value, scenario)
    methods = {label: method or optimized_method(preset) for label, (method, preset) in configs.items()}
    for label, (_, preset) in configs.items():
        roofline = roofline_base(methods[label], preset)
        base = frozen(roofline)
        jobs.append((label, "(roofline)", "base", float("nan"), roofline))
        jobs.append((label, "(frozen)", "base", float("nan"), base))
        for parameter in parameters:
            for side, factor in (("low", 1.0 - step), ("high", 1.0 + step)):
                scenario, value = perturbed(base, parameter, factor)
                jobs.append((label, parameter, side, value, scenario))
    baselines = list(dict.fromkeys(baseline_scenario(job[-1]) for job in jobs))
    simulated = simulate_many([*baselines, *(job[-1] for job in jobs)], workers=workers)
    ar = {b: row["tokens_per_s"] for b, row in zip(baselines, simulated, strict=False)}
    results = {}
    for (label, parameter, side, value, scenario), row in zip(jobs, simulated[len(baselines) :], strict=True):
        results[(label, parameter, side)] = (
            value,
            row["tokens_per_s"],
            row["tokens_per_s"] / ar[baseline_scenario(scenario)],
        )
    rows = []
    for label, (_, preset) in configs.items():
        base = frozen(roofline_base(methods[label], preset))
        _, base_tps, base_speedup = results[(label, "(frozen)", "base")]
        _, _, roofline_speedup = results[(label, "(roofline)", "base")]
        for parameter in parameters:
            low_value, low_tps, low_speedup = results[(label, parameter, "low")]
            high_value, high_tps, high_speedup = results[(label, parameter, "high")]
            rows.append(
                {
                    "config": label,
                    "design": _design_text(methods[label]),
                    "parameter": parameter,
                    "base_value": base_value(base, parameter),
                    "low_value": low_value,
                    "high_value": high_value,
                    "base_speedup": base_speedup,
                    "roofline_speedup": roofline_speedup,
                    "low_speedup": low_speedup,
                    "high_speedup": high_speedup,
                    "base_tokens_per_s": base_tps,
                    "low_tokens_per_s": low_tps,
                    "high_tokens_per_s": high_tps,
                    "swing": abs(high_speedup - low_speedup),
                }
            )
    scenarios = [scenario_to_run_dict(f"{job[0]}:{job[1]}:{job[2]}", job[-1]) for job in jobs]
    return pd.DataFrame.from_records(rows), scenarios


def _design_text(method: MethodSpec) -> str:
    if method.name != "spd":
        return f"{method.name} K={method.draft_tokens}, 1 GPU"
    split = "/".join(map(str, method.stage_layers)) if method.stage_layers else "even"
    gpus = len(method.stage_layers or range(method.num_stages)) + (method.drafter_placement == "own-gpu")
    return f"n={method.num_stages} L_s={method.spec_layers} {split} {method.drafter_placement}, {gpus} GPUs"


def figure_tornado(frame):
    """One tornado per configuration: speedup at 0.8x (blue) and 1.2x (orange) of each parameter."""
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(frame["config"]))
    fig, axes = plt.subplots(1, len(configs), figsize=(6.2 * len(configs), 6.0), squeeze=False)
    for ax, config in zip(axes[0], configs, strict=True):
        data = frame[(frame["config"] == config) & (frame["swing"] > 1e-9)].sort_values("swing")
        base = frame[frame["config"] == config]["base_speedup"].iloc[0]
        y = range(len(data))
        ax.barh(y, data["low_speedup"] - base, left=base, color="#4c72b0", label="parameter x 0.8")
        ax.barh(y, data["high_speedup"] - base, left=base, color="#dd8452", label="parameter x 1.2")
        ax.axvline(base, color="black", linewidth=1)
        ax.set_yticks(list(y), data["parameter"], fontsize=9)
        for i, row in enumerate(data.itertuples()):
            for value in (row.low_speedup, row.high_speedup):
                side = "left" if value >= base else "right"
                ax.text(
                    value + (0.01 if value >= base else -0.01),
                    i,
                    f"{value:.2f}",
                    va="center",
                    ha=side,
                    fontsize=7.5,
                )
        span = max((data[["low_speedup", "high_speedup"]] - base).abs().max().max(), 0.05)
        ax.set_xlim(base - 1.35 * span, base + 1.35 * span)
        ax.set_xlabel("speedup over AR (same parameters)")
        design = frame[frame["config"] == config]["design"].iloc[0]
        ax.set_title(f"{config}\n{design}; base {base:.2f}x", fontsize=10, loc="left")
        ax.grid(axis="x", color="#dddddd")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.suptitle(
        "Sensitivity of speedup to +-20% in each parameter (Qwen3.5-4B, H100, jitter cv 0.1, DES)",
        x=0.01,
        ha="left",
    )
    fig.tight_layout()
    return fig


def run(out_dir: Path = OUT_DIR, configs=None, parameters=None, step: float = STEP, workers: int = 0) -> dict:
    """The whole study (a subset for tests); returns the metadata it writes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = CONFIGS if configs is None else {k: CONFIGS[k] for k in configs}
    parameters = list(PARAMETERS) if parameters is None else list(parameters)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame, scenarios = study_rows(configs, parameters, step, workers)
    write_table(frame, out_dir / "sensitivity.csv")
    fig = figure_tornado(frame)
    fig.savefig(out_dir / "tornado.png", dpi=120, metadata={"Software": None})
    plt.close(fig)
    details = {
        "step": step,
        "jitter_cv": JITTER_CV,
        "configs": dict(frame[["config", "design"]].drop_duplicates().itertuples(index=False)),
        "base": "spdsim/scenarios/default.toml setting, roofline frozen to constant phase latencies at mid KV",
        "scenarios": "scenarios.json: every simulated run (spdsim compare scenarios.json)",
    }
    return write_provenance(out_dir, "sensitivity", scenarios, details)


def main() -> None:
    args = study_arguments(__doc__, OUT_DIR)
    run(args.out, workers=args.workers)
    print(f"sensitivity -> {args.out}")


if __name__ == "__main__":
    main()
