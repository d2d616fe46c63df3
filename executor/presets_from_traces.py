"""Simulator acceptance presets ``<model>/<dataset>/<config>`` measured by ``spdsim exec eval``, with provenance.

Reads eval folders (``eval.json`` + the per-run traces it names) and writes one presets file in the format
``spdsim.scenario.presets`` reads (``{"kind": "spdsim.acceptance-presets", "schema_version": 1, "presets": [...]}``); dropped
into ``spdsim/profiles/presets/`` it is embedded. Per run: SPD -> ``spd-state`` (per-verification α, saturated and
refill, counted from the trace); chains -> ``positional`` (unconditional r_k); SpecDec++ -> ``positional`` r_k of the
same chain head at its longest fixed K on the same dataset and temperature (the head's per-position quality; the
simulator models the stopping rule itself). ``<model>/<dataset>/spd`` names the primary SPD configuration.
Temperature 1 presets carry the suffix ``-t1`` (the convention of the embedded SPD-repository presets).

    python -m executor.presets_from_traces studies/heads/results/eval_* --out spdsim/profiles/presets/smollm2_135m.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from spdsim.contract import PRESET_FILE_KIND, PRESET_SCHEMA_VERSION, SpdsimError, read_preset_file


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_eval(folder: Path) -> tuple[dict, list[dict]]:
    """eval.json of a folder, each row's acceptance figures recounted from its committed trace file."""
    from executor.evaluate import trace_summary

    path = Path(folder) / "eval.json"
    if not path.is_file():
        raise SpdsimError(f"presets: '{folder}' has no eval.json (not an `spdsim exec eval` folder)")
    payload = json.loads(path.read_text())
    rows = []
    for row in payload["rows"]:
        trace = read_trace_rows(Path(folder) / row["trace"])
        figures = trace_summary(trace, "spd" if row["method"] == "spd" else "chain")
        if "r_k" in figures:
            figures["r_k"] = ";".join(f"{r:.6f}" for r in figures["r_k"])
        rows.append({**row, **figures})
    return payload, rows


def read_trace_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise SpdsimError(f"presets: trace '{path}' named in eval.json is missing")
    integers = (
        "verify_index",
        "position",
        "draft_index",
        "width",
        "drafted_token",
        "target_token",
        "accepted",
    )
    with path.open() as handle:
        return [{k: int(v) if k in integers else v for k, v in row.items()} for row in csv.DictReader(handle)]


def _suffix(temperature: float) -> str:
    return "" if temperature == 0 else f"-t{temperature:g}"


def _provenance(payload: dict, row: dict, folder: Path) -> str:
    config, env = payload["config"], payload["environment"]
    return (
        f"measured: spdsim exec eval, head {Path(config['head']).name} on {config.get('model', '?')} "
        f"({config.get('model_source', '')}), {env.get('device')} {env.get('date_utc')}, git {env.get('git_head')}, "
        f"torch {env.get('torch')}; {row['prompts']} {row['dataset']} prompts (first turn, chat template), "
        f"{config['max_new_tokens']} new tokens at most ({int(row['decode_tokens']) / int(row['prompts']):.1f} "
        f"decoded per prompt), T={row['temperature']}, {row['verifications']} verifications; "
        f"trace {folder.name}/{row['trace']}"
    )


def _spd_entry(row: dict, head_config: dict) -> tuple[dict, dict]:
    saturated, refill = _number(row["alpha_saturated"]), _number(row["alpha_refill"])
    saturated = refill if saturated is None else saturated
    refill = saturated if refill is None else refill
    if saturated is None:
        raise SpdsimError(f"presets: SPD run {row['label']} on {row['dataset']} has no verification")
    method = {
        "name": "spd",
        "num_stages": int(row["width"]),
        "spec_layers": int(head_config.get("spec_layers", 1)),
    }
    if head_config.get("stage_layers") and len(set(head_config["stage_layers"])) > 1:
        method["stage_layers"] = list(head_config["stage_layers"])
    acceptance = {
        "kind": "spd-state",
        "alpha_saturated": round(saturated, 6),
        "alpha_refill": round(refill, 6),
    }
    return method, acceptance


def _rates(row: dict) -> list[float]:
    return [round(float(r), 6) for r in str(row["r_k"]).split(";") if r]


def build_presets(folders: list[Path], model: str, primary_spd: str | None = None) -> list[dict]:
    """Preset entries from eval folders (SPD, EAGLE-3 chains, SpecDec++), plus the ``.../spd`` aliases."""
    evals = []
    for folder in folders:
        payload, rows = read_eval(Path(folder))
        evals.append((Path(folder), payload, rows))
    chain_rates: dict[tuple[str, float], tuple[int, list[float]]] = {}
    for _, _, rows in evals:
        for row in rows:
            if row["method"] == "eagle3":
                key, width = (row["dataset"], float(row["temperature"])), int(row["width"])
                if width > chain_rates.get(key, (0, []))[0]:
                    chain_rates[key] = (width, _rates(row))
    entries, spd_labels = [], []
    for folder, payload, rows in evals:
        config = payload["config"]
        for row in rows:
            temperature = float(row["temperature"])
            entry = {
                "name": f"{model}/{row['dataset']}/{row['label']}{_suffix(temperature)}",
                "dataset": row["dataset"],
                "temperature": temperature,
                "source": _provenance(payload, row, folder),
            }
            if row["method"] == "spd":
                head_config = _spd_head_config(config)
                entry["method"], entry["acceptance"] = _spd_entry(row, head_config)
                spd_labels.append(row["label"])
            elif row["method"] == "eagle3":
                entry["method"] = {"name": "eagle3", "draft_tokens": int(row["width"])}
                entry["acceptance"] = {"kind": "positional", "rates": _rates(row)}
            elif row["method"] == "specdecpp":
                rates = chain_rates.get((row["dataset"], temperature))
                if rates is None:
                    continue  # needs the chain head's fixed-K evaluation for its per-position rates
                threshold = float(row["label"].split("-h", 1)[1])
                entry["method"] = {
                    "name": "specdecpp",
                    "stop_threshold": threshold,
                    "k_min": int(config.get("k_min", 2)),
                    "k_max": int(config.get("k_max", 10)),
                }
                entry["acceptance"] = {"kind": "positional", "rates": rates[1]}
                entry["source"] += f"; rates: the same chain head's eagle3-k{rates[0]} run"
            else:
                continue
            entries.append(entry)
    entries += _spd_aliases(entries, model, primary_spd or _default_primary(spd_labels))
    return entries


def _spd_head_config(config: dict) -> dict:
    """num_spec_layers / stage_layers of the evaluated SPD checkpoint, as eval.json recorded them."""
    head_config = config.get("head_config", {})
    return {
        "spec_layers": head_config.get("num_spec_layers", 1),
        "stage_layers": head_config.get("stage_layers"),
    }


def _default_primary(labels: list[str]) -> str | None:
    if not labels:
        return None
    return "spd-n4-l2" if "spd-n4-l2" in labels else sorted(set(labels))[0]


def _spd_aliases(entries: list[dict], model: str, primary: str | None) -> list[dict]:
    aliases = []
    for entry in entries:
        dataset, label = entry["name"].split("/")[1:3]
        suffix = _suffix(entry["temperature"])
        if primary and label == primary + suffix:
            alias = dict(entry, name=f"{model}/{dataset}/spd{suffix}")
            alias["source"] = f"alias of {entry['name']}; " + entry["source"]
            aliases.append(alias)
    return aliases


def write_presets(entries: list[dict], out: Path, description: str) -> Path:
    """Write the presets file atomically and check it parses with spdsim's own reader."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "kind": PRESET_FILE_KIND,
        "schema_version": PRESET_SCHEMA_VERSION,
        "description": description,
        "presets": sorted(entries, key=lambda e: e["name"]),
    }
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    try:
        read_preset_file(tmp)
    except SpdsimError:
        tmp.unlink()
        raise
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="`spdsim exec eval` output folders")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--primary-spd", default=None, help="SPD label behind <model>/<dataset>/spd")
    parser.add_argument("--out", type=Path, default=Path("spdsim/profiles/presets/smollm2_135m.json"))
    args = parser.parse_args(argv)
    try:
        entries = build_presets(args.folders, args.model, args.primary_spd)
        path = write_presets(
            entries, args.out, f"Acceptance measured on {args.model} with trained heads (issue 4)."
        )
    except SpdsimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(entries)} presets -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
