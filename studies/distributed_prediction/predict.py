"""Predicted cycle time and speedup of distributed SPD with the host off the critical path (issue 15), priced by the
simulator (`spdsim.engine.run.simulate`, the profiled latency model) from a single-GPU phase profile bundle.

Inputs, per model: the bundle `executor/profile.py` writes (phases "layers", "head", "ar_step", "drafter", "p2p",
"embed" and "host_issue": host µs to launch g graphs), by default `studies/fidelity_1gpu/results/<tag>/profile.json`;
without it, the committed single-H200 numbers of `studies/executor_speed/results/ar_<tag>_h200.json` (compiled
stage graphs at kv_len 256, lm_head + verify, compiled AR step) turned into the same phase tables.

What the simulator prices (`spdsim/methods/pipeline.py`): every stage's compiled forward and hidden-state send in
parallel, the drafter (the "drafter" phase, n + 1 rows, L_s = 1) on stage 0's GPU back to back with stage 0
(`drafter_placement = "stage0"`; no contention phase: serialised) or on its own GPU, the verify on the last
stage's GPU (`verify_placement = "last-stage"`: only the token ids travel back), n − 1 refill cycles per rejection
with only the active stages, i.i.d. acceptance α. Speedup: tokens/s over AR on one GPU (the "ar_step" phase, the
compiled whole-step graph) with the same host costs per step. The rest is in ``ASSUMPTIONS`` (stated per row in
results/predictions.json).

Run: ``python studies/distributed_prediction/predict.py [--bundle-8b PATH] [--bundle-4b PATH]`` (writes results/).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from executor.stages import uneven_counts
from spdsim.contract.profile_schema import validate_profile
from spdsim.engine.metrics import summarize
from spdsim.engine.run import simulate
from spdsim.latency.build import build_latency_model
from spdsim.methods.pipeline import pipeline_costs
from spdsim.scenario.config import AcceptanceSpec, LatencySpec, MethodSpec, Overheads, Scenario, Workload
from spdsim.scenario.presets import get_model

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "studies" / "executor_speed" / "results"
BUNDLES = ROOT / "studies" / "fidelity_1gpu" / "results"
OUT = Path(__file__).resolve().parent / "results"
MODELS = ("qwen3-8b", "qwen3-4b")
STAGES = (2, 4, 8)
ALPHAS = (0.6, 0.8, 0.95)
PLACEMENTS = {"colocated": "stage0", "own": "own-gpu"}
AR_VARIANT = "fast + compile(default+cdt) + CUDA graph"
NEW_TOKENS = 128

ASSUMPTIONS = {
    "nccl_p2p_us": 15.0,  # NCCL launch + NVLink latency of one small p2p message, beyond the one-GPU d2d copy
    "d2h_read_us": 10.0,  # the controller's one device-to-host read per cycle (the verify triple, 24 bytes)
    # launch of one graph replay (input copy included) when the bundle has no "host_issue" phase: measured 15.1 µs
    # per graph on the H100 machine (studies/executor_speed/results/h100_session4/phases_qwen3-4b_h100.md)
    "host_issue_us_per_graph": 15.1,
    # without a bundle (committed numbers only):
    "drafter_proj_us": 30.0,  # aggr projection (k·H x H GEMV)
    "drafter_head_fraction": 1.0,  # draft lm_head + argmax relative to the target's lm_head + verify
    "p2p_copy_us": 5.0,  # the d2d copy a "p2p" phase would hold
}


def host_issue_us(bundle: dict, graphs: int) -> float:
    """Host µs to launch ``graphs`` graph replays: the bundle's "host_issue" phase, interpolated; else assumed."""
    entries = bundle.get("phases", {}).get("host_issue")
    if not entries:
        return ASSUMPTIONS["host_issue_us_per_graph"] * graphs
    points = sorted((float(e["graphs"]), float(e["median_us"])) for e in entries)
    xs, ys = zip(*points, strict=True)
    if graphs > xs[-1]:  # linear beyond the last measured count (launches add up)
        return ys[-1] + (graphs - xs[-1]) * (ys[-1] / xs[-1])
    return float(np.interp(graphs, xs, ys))


def committed_bundle(tag: str) -> dict:
    """The committed single-H200 numbers as a profile bundle (flat in kv_len: they were taken at kv_len 256)."""
    data = json.loads((COMMITTED / f"ar_{tag}_h200.json").read_text())
    shape = get_model(tag)
    kvs = (64, 256, 4096)
    stat = {"p10_us": 0.0, "p90_us": 0.0, "samples": 1}
    per_layer = mean_layer_us(data["stages"])
    layers = {}
    for s in data["stages"]:
        layers.setdefault(s["layers"], []).append(s["median_us"])
    head = next(h["median_us"] for h in data["head_verify"] if h["query_tokens"] == 1)
    ar = next(a["step_median_us"] for a in data["ar"] if a["variant"] == AR_VARIANT)
    phases = {
        "layers": [
            {"layers": n, "query_tokens": 1, "kv_len": kv, "median_us": float(np.median(v)), **stat}
            for n, v in layers.items()
            for kv in kvs
        ],
        "embed": [{"query_tokens": 1, "median_us": 0.0, **stat}],
        "head": [{"query_tokens": 1, "median_us": head, **stat}],
        "ar_step": [{"kv_len": kv, "median_us": ar, **stat} for kv in kvs],
        "drafter": assumed_drafter(per_layer, head, kvs),
        "p2p": [{"bytes": b, "median_us": ASSUMPTIONS["p2p_copy_us"], **stat} for b in (0, 1 << 20)],
    }
    model = {k: v for k, v in vars(shape).items()}
    return {
        "schema_version": 1,
        "kind": "spdsim.profile",
        "hardware": {"name": "nvidia-h200"},
        "model": model,
        "dtype": "bfloat16",
        "software": data["environment"],
        "date": data["environment"]["date"][:10],
        "source": f"studies/executor_speed/results/ar_{tag}_h200.json (committed), predict.py assumptions",
        "phases": phases,
    }


def mean_layer_us(stages: list[dict]) -> float:
    """One decoder layer's µs, from stage steps of several layer counts (their total time over their layers)."""
    return sum(s["median_us"] for s in stages) / sum(s["layers"] for s in stages)


def assumed_drafter(per_layer_us: float, head_us: float, kvs) -> list[dict]:
    """The "drafter" phase (L_s = 1) where none was measured: the aggregation projection, one mean target layer
    at one query row and the draft head (``ASSUMPTIONS``), flat in rows (3 to 9) and kv_len."""
    drafter = ASSUMPTIONS["drafter_proj_us"] + per_layer_us + ASSUMPTIONS["drafter_head_fraction"] * head_us
    stat = {"p10_us": 0.0, "p90_us": 0.0, "samples": 1}
    return [
        {"spec_layers": 1, "query_tokens": q, "kv_len": kv, "median_us": drafter, **stat}
        for q in (3, 9)
        for kv in sorted(kvs)
    ]


def with_drafter(bundle: dict) -> tuple[dict, str]:
    """``bundle`` with an assumed "drafter" phase if it measured none (from its own one-token stage steps and
    head), and a note for the row's source; a bundle with one is returned as it is."""
    phases = bundle["phases"]
    if "drafter" in phases:
        return bundle, ""
    one_token = [e for e in phases["layers"] if e["query_tokens"] == 1]
    shortest = min(e["kv_len"] for e in one_token)
    stages = [e for e in one_token if e["kv_len"] == shortest]
    per_layer = mean_layer_us(stages)
    head = next(e["median_us"] for e in phases["head"] if e["query_tokens"] == 1)
    kvs = {e["kv_len"] for e in phases["layers"]}
    note = f"; drafter assumed (no drafter phase): {per_layer:.1f} us a layer + head + projection"
    return {**bundle, "phases": {**phases, "drafter": assumed_drafter(per_layer, head, kvs)}}, note


def load_bundle(tag: str, path: Path | None) -> tuple[dict, str]:
    shown = path and (path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path.name)
    if path is not None and path.is_file():
        bundle, note = with_drafter(json.loads(path.read_text()))
        return bundle, f"{shown}{note}"
    return committed_bundle(tag), f"studies/executor_speed/results/ar_{tag}_h200.json (no bundle at {shown})"


def simulator_profile(bundle: dict, directory: Path, tag: str) -> Path:
    """The bundle's simulator phases (host_issue is priced here, not by the engine) as a schema-v1 profile file."""
    profile = dict(bundle)
    profile["phases"] = {k: v for k, v in bundle["phases"].items() if k != "host_issue"}
    validate_profile(profile)
    path = directory / f"profile_{tag}.json"
    path.write_text(json.dumps(profile))
    return path


def scenario(
    profile_path: Path, bundle: dict, method: MethodSpec, alpha: float, overheads: Overheads
) -> Scenario:
    kvs = [e["kv_len"] for e in bundle["phases"]["layers"]]
    prompt = max(min(kvs), min(128, max(kvs) - NEW_TOKENS - 16))
    shape = get_model(bundle["model"]["name"].replace("random:", "")) if "name" in bundle["model"] else None
    return Scenario(
        method=method,
        model=shape,
        latency=LatencySpec(kind="measured", profile_path=str(profile_path)),
        acceptance=AcceptanceSpec(kind="iid", alpha=alpha),
        overheads=overheads,
        workload=Workload(prompt_tokens=prompt, new_tokens=NEW_TOKENS, num_requests=4),
    )


def predict(bundles: dict[str, Path | None]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tag in MODELS:
            bundle, source = load_bundle(tag, bundles.get(tag))
            gpu = bundle["hardware"].get("gpu") or bundle["hardware"]["name"]
            profile = simulator_profile(bundle, Path(tmp), tag)
            nccl_ns = int(ASSUMPTIONS["nccl_p2p_us"] * 1e3)
            d2h = ASSUMPTIONS["d2h_read_us"]
            ar_host = d2h + host_issue_us(bundle, 1) if "host_issue" in bundle["phases"] else 0.0
            ar_over = Overheads(fixed_cycle_ns=int(ar_host * 1e3))
            ar = simulate(
                scenario(profile, bundle, MethodSpec(name="ar"), 0.0, ar_over), record_intervals=False
            )
            ar_ms = summarize(ar)["tpot_ms"]
            layers = bundle["model"]["num_layers"]
            for n in STAGES:
                for placement, where in PLACEMENTS.items():
                    # the controller's launches after the decision: stage 0 + drafter graphs (co-located) or the
                    # drafter graph (own GPU), then the control word travels to the stage ranks
                    host = d2h + host_issue_us(bundle, 2 if placement == "colocated" else 1)
                    overheads = Overheads(control_ns=nccl_ns, p2p_ns=nccl_ns, fixed_cycle_ns=int(host * 1e3))
                    method = MethodSpec(
                        name="spd",
                        num_stages=n,
                        stage_layers=uneven_counts(layers, n),
                        spec_layers=1,
                        drafter_placement=where,
                        verify_placement="last-stage",
                        draft_vocab_size=0,
                    )
                    # the saturated cycle does not depend on α: priced once per design
                    first = scenario(profile, bundle, method, ALPHAS[0], overheads)
                    saturated = pipeline_costs(first, build_latency_model(first)).cycle_ns[n]
                    for alpha in ALPHAS:
                        spec = scenario(profile, bundle, method, alpha, overheads)
                        summary = summarize(simulate(spec, record_intervals=False), ar)
                        rows.append(
                            {
                                "model": tag,
                                "n": n,
                                "placement": placement,
                                "gpus": n if placement == "colocated" else n + 1,
                                "alpha": alpha,
                                "saturated_cycle_ms": float(np.median(saturated)) / 1e6,
                                "tokens_per_cycle": summary["rho"],
                                "tpot_ms": summary["tpot_ms"],
                                "ar_ms": ar_ms,
                                "speedup_vs_compiled_ar": summary["speedup"],
                                "host_us_per_cycle": host,
                                "source": source,
                                "gpu": gpu,
                            }
                        )
    return rows


def markdown(rows: list[dict], gpus: str) -> str:
    lines = [
        f"# Predicted distributed SPD on {gpus} (host off the critical path, compiled graphs, verify on the last "
        "stage)",
        "",
        "Generated by `python studies/distributed_prediction/predict.py` with the simulator (profiled latency "
        "model); the input of each row is in its `source` column of predictions.json.",
        f"Assumptions: {json.dumps(ASSUMPTIONS)}. Not measured on several GPUs yet.",
        "",
        "| model | n | drafter | GPUs | α | saturated cycle (ms) | ρ | TPOT (ms) | AR (ms) | speedup vs compiled AR |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['n']} | {r['placement']} | {r['gpus']} | {r['alpha']} "
            f"| {r['saturated_cycle_ms']:.3f} | {r['tokens_per_cycle']:.3f} | {r['tpot_ms']:.3f} | {r['ar_ms']:.3f} "
            f"| {r['speedup_vs_compiled_ar']:.2f} |"
        )
    sources = sorted({f"{r['model']}: {r['source']}" for r in rows})
    return "\n".join(lines + ["", "Inputs: " + "; ".join(sources)]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle-8b", type=Path, default=BUNDLES / "qwen3-8b" / "profile.json")
    parser.add_argument("--bundle-4b", type=Path, default=BUNDLES / "qwen3-4b" / "profile.json")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rows = predict({"qwen3-8b": args.bundle_8b, "qwen3-4b": args.bundle_4b})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "predictions.json").write_text(
        json.dumps({"assumptions": ASSUMPTIONS, "rows": rows}, indent=1)
    )
    (args.out / "predictions.md").write_text(markdown(rows, ", ".join(sorted({r["gpu"] for r in rows}))))
    for placement in PLACEMENTS:
        key = next(
            r
            for r in rows
            if r["model"] == "qwen3-8b" and r["n"] == 2 and r["alpha"] == 0.8 and r["placement"] == placement
        )
        print(
            f"qwen3-8b n=2 α=0.8 {placement}: saturated cycle {key['saturated_cycle_ms']:.3f} ms, TPOT "
            f"{key['tpot_ms']:.3f} ms, speedup {key['speedup_vs_compiled_ar']:.2f}x over compiled AR "
            f"({key['ar_ms']:.3f} ms/token)"
        )


if __name__ == "__main__":
    main()
