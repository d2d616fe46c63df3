"""Embedded hardware profiles, model shapes and acceptance presets, each with the source of its numbers.

Data lives as JSON under ``spdsim/profiles/{hardware,models,presets}/``. Acceptance presets are read from every
``*.json`` in ``profiles/presets/`` (and from extra directories a caller names), so adding measured presets is a
file drop. A preset either states its acceptance directly or derives it from a published figure
(``derive``), so the JSON records the number that was published, not our arithmetic on it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from spdsim.contract import PRESET_FILE_KIND, PRESET_SCHEMA_VERSION
from spdsim.errors import SpdsimError
from spdsim.scenario.config import ACCEPTANCE_KINDS, METHODS, AcceptanceSpec, Hardware, ModelShape

DERIVATIONS = ("pipeline-theoretical-speedup", "chain-acceptance-length", "sd-optimal-speedup")


@dataclass(frozen=True)
class AcceptancePreset:
    """Acceptance measured or implied for one (model, dataset, method configuration)."""

    name: str
    acceptance: dict[str, Any]  # AcceptanceSpec fields (kind, alpha, rates, ...)
    method: dict[str, Any]  # MethodSpec fields of the configuration it was measured at
    source: str
    dataset: str = ""
    temperature: float = 0.0
    published: dict[str, Any] = field(default_factory=dict)  # the published figure an alpha was derived from


def profiles_root() -> Path:
    return Path(str(resources.files("spdsim") / "profiles"))


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SpdsimError(f"{what}: '{path}' is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _named_files(kind: str) -> dict[str, Path]:
    return {p.stem: p for p in sorted((profiles_root() / kind).glob("*.json"))}


def _build(cls: type, data: dict[str, Any], what: str) -> Any:
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - allowed - {"source"})
    if unknown:
        raise SpdsimError(f"{what}: unknown field '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")
    return cls(**{k: v for k, v in data.items() if k in allowed})


def hardware_names() -> list[str]:
    return list(_named_files("hardware"))


def model_names() -> list[str]:
    return list(_named_files("models"))


def hardware_source(name: str) -> str:
    return _read_json(_lookup("hardware", name, "hardware"), "hardware").get("source", "")


def model_source(name: str) -> str:
    return _read_json(_lookup("models", name, "model"), "model").get("source", "")


def _lookup(kind: str, name: str, field_name: str) -> Path:
    files = _named_files(kind)
    path = files.get(name.lower())
    if path is None:
        raise SpdsimError(f"{field_name}: unknown {field_name} '{name}' (allowed: {', '.join(files)})")
    return path


def get_hardware(name: str) -> Hardware:
    """An embedded hardware profile by name (``h100``, ``h200``)."""
    data = _read_json(_lookup("hardware", name, "hardware"), "hardware")
    return _build(Hardware, data, f"hardware '{name}'")


def get_model(name: str) -> ModelShape:
    """An embedded model shape by name (``qwen3.5-4b``, ``llama-3.1-8b``, ...)."""
    data = _read_json(_lookup("models", name, "model"), "model")
    return _build(ModelShape, data, f"model '{name}'")


# ---------------------------------------------------------------------------------------------- derivations


def alpha_from_pipeline_speedup(num_stages: int, speedup: float) -> float:
    """Invert S = n / (1 + (n-1)(1-alpha)) (reference/spd.md 4.2, 5.3)."""
    if num_stages < 2:
        raise SpdsimError("derive.num_stages: must be >= 2 to imply an alpha")
    alpha = 1.0 - (num_stages / speedup - 1.0) / (num_stages - 1)
    return min(1.0, max(0.0, alpha))


def chain_acceptance_length(alpha: float, draft_tokens: int) -> float:
    """tau(K) = 1 + sum_k alpha^k = (1 - alpha^(K+1)) / (1 - alpha), bonus token included (F1)."""
    return sum(alpha**k for k in range(draft_tokens + 1))


def sd_optimal_speedup(alpha: float, cost_ratio: float, max_gamma: int = 40) -> float:
    """Leviathan's speedup maximised over gamma = 1..40: (1 - a^(g+1)) / ((1 - a)(g c + 1)) (F2)."""
    return max(
        chain_acceptance_length(alpha, gamma) / (gamma * cost_ratio + 1.0)
        for gamma in range(1, max_gamma + 1)
    )


def _bisect_increasing(func, target: float) -> float:
    low, high = 0.0, 1.0 - 1e-12
    if target <= func(low):
        return 0.0
    if target >= func(high):
        return 1.0
    for _ in range(80):
        mid = 0.5 * (low + high)
        if func(mid) < target:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def alpha_from_chain_tau(draft_tokens: int, tau: float) -> float:
    """Effective i.i.d. alpha whose chain acceptance length at K equals a published tau (F8)."""
    return _bisect_increasing(lambda a: chain_acceptance_length(a, draft_tokens), tau)


def alpha_from_sd_speedup(cost_ratio: float, speedup: float) -> float:
    """Alpha whose optimal-gamma classic-SD speedup at draft/target cost ratio c equals a published speedup."""
    return _bisect_increasing(lambda a: sd_optimal_speedup(a, cost_ratio), speedup)


def _derive_alpha(derive: dict[str, Any], where: str) -> float:
    kind = derive.get("from")
    value = derive.get("value")
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise SpdsimError(f"{where}.derive.value: must be a positive number")
    if kind == "pipeline-theoretical-speedup":
        return alpha_from_pipeline_speedup(int(derive["num_stages"]), float(value))
    if kind == "chain-acceptance-length":
        return alpha_from_chain_tau(int(derive["draft_tokens"]), float(value))
    if kind == "sd-optimal-speedup":
        return alpha_from_sd_speedup(float(derive["cost_ratio"]), float(value))
    raise SpdsimError(f"{where}.derive.from: unknown derivation {kind!r} (allowed: {', '.join(DERIVATIONS)})")


# -------------------------------------------------------------------------------------------------- presets


def _preset_from_entry(entry: Any, where: str) -> AcceptancePreset:
    if not isinstance(entry, dict):
        raise SpdsimError(f"{where}: each preset must be a JSON object")
    for key in ("name", "source", "method"):
        if key not in entry:
            raise SpdsimError(f"{where}: missing field '{key}'")
    name = entry["name"]
    where = f"{where} '{name}'"
    if not isinstance(entry["source"], str) or not entry["source"].strip():
        raise SpdsimError(f"{where}.source: every preset must say where its numbers come from")
    method = dict(entry["method"])
    if method.get("name") not in METHODS:
        raise SpdsimError(
            f"{where}.method.name: unknown method {method.get('name')!r} (allowed: {', '.join(METHODS)})"
        )
    acceptance = dict(entry.get("acceptance", {"kind": "iid"}))
    published: dict[str, Any] = {}
    if "derive" in entry:
        acceptance.setdefault("kind", "iid")
        acceptance["alpha"] = round(_derive_alpha(entry["derive"], where), 6)
        published = dict(entry["derive"])
    elif "acceptance" not in entry:
        raise SpdsimError(f"{where}: needs 'acceptance' or 'derive'")
    allowed = {f.name for f in fields(AcceptanceSpec)}
    unknown = sorted(set(acceptance) - allowed)
    if unknown:
        raise SpdsimError(
            f"{where}.acceptance: unknown field '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})"
        )
    if acceptance.get("kind", "iid") not in ACCEPTANCE_KINDS:
        raise SpdsimError(f"{where}.acceptance.kind: allowed {', '.join(ACCEPTANCE_KINDS)}")
    if "rates" in acceptance:
        acceptance["rates"] = list(acceptance["rates"])
    return AcceptancePreset(
        name=name,
        acceptance=acceptance,
        method=method,
        source=entry["source"],
        dataset=entry.get("dataset", ""),
        temperature=float(entry.get("temperature", 0.0)),
        published=published,
    )


def read_preset_file(path: str | Path) -> list[AcceptancePreset]:
    """Parse one presets JSON file (``{"kind": "spdsim.acceptance-presets", "presets": [...]}``)."""
    path = Path(path)
    if not path.is_file():
        raise SpdsimError(f"acceptance presets: no such file '{path}'")
    data = _read_json(path, "acceptance presets")
    where = f"presets file '{path.name}'"
    if not isinstance(data, dict) or data.get("kind") != PRESET_FILE_KIND:
        raise SpdsimError(f"{where}.kind: expected '{PRESET_FILE_KIND}'")
    if data.get("schema_version") != PRESET_SCHEMA_VERSION:
        raise SpdsimError(f"{where}.schema_version: this spdsim reads version {PRESET_SCHEMA_VERSION}")
    entries = data.get("presets")
    if not isinstance(entries, list):
        raise SpdsimError(f"{where}.presets: must be a list")
    return [_preset_from_entry(entry, where) for entry in entries]


def load_presets(extra_dirs: Iterable[str | Path] = ()) -> dict[str, AcceptancePreset]:
    """All presets by name: the embedded ones, then every ``*.json`` in ``extra_dirs``; a name may appear once."""
    directories = [profiles_root() / "presets", *map(Path, extra_dirs)]
    presets: dict[str, AcceptancePreset] = {}
    for directory in directories:
        for path in sorted(directory.glob("*.json")):
            for preset in read_preset_file(path):
                if preset.name in presets:
                    raise SpdsimError(
                        f"acceptance preset '{preset.name}' is defined twice (again in '{path}')"
                    )
                presets[preset.name] = preset
    return presets


def get_preset(name: str, presets: dict[str, AcceptancePreset] | None = None) -> AcceptancePreset:
    """A preset by name; an unknown name lists the closest names (same model/dataset prefix)."""
    presets = load_presets() if presets is None else presets
    if name in presets:
        return presets[name]
    prefix = name.rsplit("/", 1)[0] + "/"
    near = [n for n in presets if n.startswith(prefix)] or sorted({n.split("/")[0] + "/..." for n in presets})
    raise SpdsimError(
        f"acceptance.preset: unknown preset '{name}' (allowed: {', '.join(near[:12])}; see `spdsim list`)"
    )


# -------------------------------------------------------------------------------------------------- catalog

CATALOG_SECTIONS = ("methods", "hardware", "models", "presets")


def catalog(section: str) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """(headers, rows) describing one section of what is embedded, for `spdsim list`."""
    if section == "methods":
        from spdsim.methods import METHODS as REGISTRY

        return ("method", "family", "description"), [
            (m.name, m.family, m.description) for m in REGISTRY.values()
        ]
    if section == "hardware":
        rows = []
        for name in hardware_names():
            hw = get_hardware(name)
            rows.append((name, f"{hw.mem_bandwidth_gbps:g} GB/s, {hw.peak_tflops:g} TFLOPS", hw.source))
        return ("hardware", "bandwidth, peak", "source"), rows
    if section == "models":
        rows = []
        for name in model_names():
            m = get_model(name)
            shape = f"L={m.num_layers} H={m.hidden_size} V={m.vocab_size}"
            rows.append((name, shape, model_source(name)))
        return ("model", "shape", "source"), rows
    if section == "presets":
        rows = []
        for preset in load_presets().values():
            acc = preset.acceptance
            value = f"r={list(acc['rates'])}" if acc.get("rates") else f"alpha={acc.get('alpha', '-')}"
            rows.append((preset.name, value, preset.source))
        return ("preset", "acceptance", "source"), rows
    raise SpdsimError(f"list: unknown section '{section}' (allowed: {', '.join(CATALOG_SECTIONS)})")
