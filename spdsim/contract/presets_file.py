"""The acceptance-presets file format: what ``spdsim.scenario.presets`` reads from ``profiles/presets/`` and
``executor presets`` writes from measured traces.

One JSON object ``{"kind": "spdsim.acceptance-presets", "schema_version": 1, "presets": [...]}``; every preset
names its source and states its acceptance (``acceptance``) or derives it from a published figure (``derive``:
``from`` one of DERIVATIONS, ``value``, and ``num_stages``, ``draft_tokens`` or ``cost_ratio``), so the file
records the number that was published, not our arithmetic on it. The arithmetic is ``spdsim.formulas``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from spdsim.contract.vocabulary import ACCEPTANCE_KINDS, METHODS
from spdsim.errors import SpdsimError
from spdsim.formulas import alpha_from_chain_tau, alpha_from_sd_speedup, alpha_from_spd_speedup
from spdsim.scenario.config import AcceptanceSpec

PRESET_FILE_KIND = "spdsim.acceptance-presets"
PRESET_SCHEMA_VERSION = 1
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


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SpdsimError(f"{what}: '{path}' is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def alpha_from_pipeline_speedup(num_stages: int, speedup: float) -> float:
    """Invert S = n / (1 + (n-1)(1-alpha)) (docs/spd.md 4.2, 5.3)."""
    if num_stages < 2:
        raise SpdsimError("derive.num_stages: must be >= 2 to imply an alpha")
    return min(1.0, max(0.0, alpha_from_spd_speedup(num_stages, speedup)))


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
