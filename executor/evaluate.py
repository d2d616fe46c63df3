"""`spdsim exec eval`: decode the evaluation prompts with a trained head and measure acceptance.

For each dataset (first turn of ``limit`` prompts, chat template) and temperature, every configuration of the head
runs (SPD: the checkpoint's n and L_s; EAGLE-3: K in ``k_values``; SpecDec++: h in ``thresholds``), and at T = 0
every prompt is compared token for token with greedy AR. Per (method, dataset, T): acceptance rate (accepted /
drafted), mean acceptance length (chains: 1 + accepted per verification, bonus included; SPD: the equivalent
n·ρ), per-position unconditional r_k (chains), per-verification α split by saturated / refill state (SPD), ρ
(tokens per decode-loop iteration) and n·ρ. Writes ``acceptance.csv``, ``acceptance.md`` (config, versions,
device, date), ``eval.json`` and one acceptance trace per run under ``traces/`` (the team's TRACE format).
A full evaluation decodes thousands of prompts: ``show_progress`` draws each run's per-prompt bar on stderr
(``executor.console.prompt_bar``, as ``spdsim exec run``).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from spdsim.contract import SpdsimError

TABLE_COLUMNS = (
    "method",
    "label",
    "dataset",
    "temperature",
    "width",
    "prompts",
    "decode_tokens",
    "verifications",
    "acceptance_rate",
    "mean_acceptance_length",
    "r_k",
    "alpha_saturated",
    "alpha_refill",
    "verifications_saturated",
    "verifications_refill",
    "rho",
    "n_rho",
    "mean_draft_length",
    "tokens_per_s",
    "lossless_prompts",
    "lossless_checked",
    "trace",
)


@dataclass(frozen=True)
class EvalConfig:
    datasets: tuple[str, ...] = ("mt_bench", "humaneval", "gsm8k")
    limit: int = 80
    max_new_tokens: int = 256
    temperatures: tuple[float, ...] = (0.0, 1.0)
    k_values: tuple[int, ...] = (3, 5, 7)
    thresholds: tuple[float, ...] = (0.3, 0.5)
    k_min: int = 2
    k_max: int = 10
    seed: int = 0


def detect_head(path: Path) -> tuple[str, dict]:
    """("spd" | "eagle3" | "specdecpp", its config) from a checkpoint file or a SpecDec++ folder."""
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            return "specdecpp", json.loads((path / "config.json").read_text())
        raise SpdsimError(f"head: folder '{path}' is not a SpecDec++ head (config.json + model.safetensors)")
    if not path.is_file():
        raise SpdsimError(f"head: no such file or folder '{path}'")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unreadable file: a user error at this boundary
        raise SpdsimError(f"head: '{path}' is not a readable torch checkpoint ({error})") from None
    config = payload.get("config", {}) if isinstance(payload, dict) else {}
    if config.get("format") == "spdsim-eagle3":
        return "eagle3", config
    if "num_stages" in config:
        return "spd", config
    raise SpdsimError(f"head: '{path}' is neither an SPD v11 nor an EAGLE-3 checkpoint")


def trace_summary(trace: list[dict], kind: str) -> dict:
    """Acceptance figures from one run's trace rows (chains: per verification, leading accepted drafts)."""
    if not trace:
        return {"acceptance_rate": float("nan")}
    accepted = sum(r["accepted"] for r in trace)
    out: dict = {"acceptance_rate": accepted / len(trace)}
    if kind == "spd":
        for state in ("saturated", "refill"):
            rows = [r for r in trace if r["state"] == state]
            out[f"alpha_{state}"] = sum(r["accepted"] for r in rows) / len(rows) if rows else float("nan")
            out[f"verifications_{state}"] = len(rows)
        return out
    verifies: dict[tuple, list[dict]] = {}
    for row in trace:
        verifies.setdefault((row["prompt_id"], row["verify_index"]), []).append(row)
    lengths, widths = [], []
    longest = max(r["draft_index"] for r in trace)
    hits = [0] * longest
    for rows in verifies.values():
        rows = sorted(rows, key=lambda r: r["draft_index"])
        run = 0
        for row in rows:
            if not row["accepted"]:
                break
            run += 1
        for k in range(run):
            hits[k] += 1
        lengths.append(run + 1)
        widths.append(rows[0]["width"])
    out["mean_acceptance_length"] = sum(lengths) / len(lengths)
    out["r_k"] = [h / len(verifies) for h in hits]
    out["mean_draft_length"] = sum(widths) / len(widths)
    return out


def lossless_count(result, reference) -> tuple[int, int]:
    """(prompts whose tokens equal greedy AR's, prompts checked)."""
    ar = {p.prompt_id: p.tokens for p in reference.prompts}
    same = sum(1 for p in result.prompts if p.tokens == ar[p.prompt_id])
    return same, len(result.prompts)


def table_row(label: str, dataset: str, temperature: float, result, reference, trace_path: str) -> dict:
    summary = result.summary()
    kind = "spd" if result.method == "spd" else "chain"
    figures = trace_summary([row for p in result.prompts for row in p.trace], kind)
    width = result.config.get("stages") or result.config.get("k") or result.config.get("k_max") or 1
    rho = result.tokens_per_cycle
    row = {c: "" for c in TABLE_COLUMNS}
    row.update(
        method=result.method,
        label=label,
        dataset=dataset,
        temperature=temperature,
        width=width,
        prompts=len(result.prompts),
        decode_tokens=result.decode_tokens,
        verifications=summary["verifications"],
        rho=rho,
        tokens_per_s=summary["tokens_per_s"] or "",
        trace=trace_path,
        **{k: v for k, v in figures.items() if k != "r_k"},
    )
    if kind == "spd":
        row["n_rho"] = width * rho
        row["mean_acceptance_length"] = width * rho
    else:
        row["r_k"] = ";".join(f"{r:.4f}" for r in figures.get("r_k", []))
    if reference is not None:
        row["lossless_prompts"], row["lossless_checked"] = lossless_count(result, reference)
    return row


def _runs_for_head(kind: str, head_config: dict, eval_config: EvalConfig):
    """(label, run_method name or "specdecpp", options) for every configuration of this head."""
    if kind == "spd":
        n, layers = int(head_config["num_stages"]), int(head_config.get("num_spec_layers", 1))
        opts = {"stages": n}
        if head_config.get("stage_layers"):
            opts["stage_layers"] = tuple(head_config["stage_layers"])
        return [(f"spd-n{n}-l{layers}", "spd", opts)]
    if kind == "eagle3":
        return [(f"eagle3-k{k}", "eagle3", {"k": k}) for k in eval_config.k_values]
    return [(f"specdecpp-h{h:g}", "specdecpp", {"threshold": h}) for h in eval_config.thresholds]


def evaluate_head(
    model,
    tokenizer,
    head_path: Path,
    eval_config: EvalConfig,
    out_dir: Path,
    chain_head: Path | None = None,
    progress=print,
    extra: dict | None = None,
    show_progress: bool = False,
) -> list[dict]:
    """Run every configuration of the head over the datasets and temperatures; write tables and traces.
    ``progress``: one line per run; ``show_progress``: also each run's per-prompt bar on stderr."""
    from executor.console import prompt_bar
    from executor.prompts import load_prompts
    from executor.rundir import write_trace
    from executor.schedules import run_method

    kind, head_config = detect_head(head_path)
    acceptance_head = chain = None
    if kind == "specdecpp":
        acceptance_head, chain = _specdecpp_heads(model, head_path, chain_head)
    stop_ids = _stop_ids(tokenizer)
    traces = out_dir / "traces"
    traces.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in head_config.items() if k != "draft_token_ids"}
    config = {"head": str(head_path), "head_kind": kind, "head_config": summary, **asdict(eval_config)}
    config.update(extra or {})
    rows = []
    # Temperature-major: every dataset's T = 0 runs (lossless check, presets) come first under a time limit.
    for temperature in eval_config.temperatures:
        for dataset in eval_config.datasets:
            prompts = [
                (p.prompt_id, p.token_ids) for p in load_prompts(dataset, tokenizer, limit=eval_config.limit)
            ]
            base = {
                "max_new_tokens": eval_config.max_new_tokens,
                "temperature": temperature,
                "seed": eval_config.seed,
                "stop_token_ids": stop_ids,
            }
            reference = None
            if temperature == 0.0:
                with prompt_bar(f"ar reference {dataset} T=0", show_progress) as bar:
                    reference = run_method("ar", model, prompts, **base, progress=bar)
            for label, method, opts in _runs_for_head(kind, head_config, eval_config):
                run = f"{label} {dataset} T={temperature:g}"
                progress(f"eval {run}: {len(prompts)} prompts")
                with prompt_bar(run, show_progress) as bar:
                    if method == "specdecpp":
                        result = _run_specdecpp(
                            model, chain, acceptance_head, prompts, base, opts, eval_config, bar
                        )
                    else:
                        result = run_method(
                            method, model, prompts, head=head_path, **base, **opts, progress=bar
                        )
                name = f"{label}__{dataset}__t{temperature:g}.csv"
                write_trace(result, traces / name)
                rows.append(table_row(label, dataset, temperature, result, reference, f"traces/{name}"))
                write_tables(
                    rows, out_dir, config
                )  # after every run: a time-limited job keeps what it measured
    return rows


def _specdecpp_heads(model, folder: Path, chain_head: Path | None):
    from executor.heads.eagle3 import load_eagle3
    from executor.heads.layers import base_config_of
    from executor.heads.specdecpp import load_specdecpp

    if chain_head is None:
        training = folder / "training.json"
        recorded = (
            json.loads(training.read_text()).get("options", {}).get("chain_head")
            if training.is_file()
            else None
        )
        if not recorded:
            raise SpdsimError("eval: a SpecDec++ head needs --chain-head (its EAGLE-3 head checkpoint)")
        chain_head = Path(recorded)
    chain = load_eagle3(chain_head, base_config_of(model)).to(device=model.device, dtype=model.dtype).eval()
    acceptance = load_specdecpp(folder).to(device=model.device).eval()
    return acceptance, chain


def _run_specdecpp(
    model, chain, acceptance_head, prompts, base: dict, opts: dict, eval_config: EvalConfig, progress=None
):
    from executor.schedules.common import DecodeOptions
    from executor.specdecpp_chain import run_specdecpp

    options = DecodeOptions(**{**base, "stop_token_ids": tuple(base["stop_token_ids"])})
    return run_specdecpp(
        model,
        chain,
        acceptance_head,
        prompts,
        opts["threshold"],
        eval_config.k_min,
        eval_config.k_max,
        options,
        progress=progress,
    )


def _stop_ids(tokenizer) -> tuple[int, ...]:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def write_tables(rows: list[dict], out_dir: Path, config: dict) -> None:
    """acceptance.csv, acceptance.md (with config, versions, device, date) and eval.json."""
    from executor.train.run import environment

    env = environment()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _fmt(v) for k, v in row.items()} for row in rows)
    (out_dir / "acceptance.csv").write_text(buffer.getvalue())
    shown = [c for c in TABLE_COLUMNS if c not in ("trace", "method")]
    lines = [
        "# Measured acceptance",
        "",
        f"- config: `{json.dumps(config, sort_keys=True)}`",
        f"- environment: `{json.dumps(env, sort_keys=True)}`",
        "- mean_acceptance_length: chains 1 + accepted drafts per verification (bonus included); SPD n·ρ",
        "- r_k: unconditional per-position acceptance (chains); alpha_*: SPD per-verification, by state",
        "",
        "| " + " | ".join(shown) + " |",
        "| " + " | ".join("---" for _ in shown) + " |",
    ]
    lines += ["| " + " | ".join(_fmt(row[c]) for c in shown) + " |" for row in rows]
    (out_dir / "acceptance.md").write_text("\n".join(lines) + "\n")
    payload = _finite({"config": config, "environment": env, "rows": rows})
    (out_dir / "eval.json").write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def _finite(value):
    """NaN/inf -> None, so eval.json is strict JSON."""
    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
