"""Scenario files (TOML or JSON) -> validated Scenarios: the boundary where user input is checked.

A scenario file holds the fields of :class:`spdsim.scenario.config.Scenario` (``model`` and ``hardware`` may name an
embedded profile, ``acceptance.preset`` an embedded acceptance preset) and optionally ``[[runs]]``: variants
compared side by side, each deep-merged onto the base (a run's ``acceptance`` table replaces the base's
wholesale, so a preset never leaks into a run that states its own acceptance). ``--set key.sub=value``
overrides apply to every run after merging; explicit acceptance keys win over the preset's values.
A run directory's ``config.json`` is itself a scenario file, so any run can be reproduced from it.
"""

from __future__ import annotations

import copy
import json
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from spdsim.contract.profile_schema import load_profile
from spdsim.errors import SpdsimError
from spdsim.scenario.bounds import check_bounds
from spdsim.scenario.checks import check, validate_scenario
from spdsim.scenario.config import (
    METHODS,
    AcceptanceSpec,
    Hardware,
    LatencySpec,
    MethodSpec,
    ModelShape,
    Overheads,
    Scenario,
    Workload,
)
from spdsim.scenario.memory import check_memory
from spdsim.scenario.presets import (
    AcceptancePreset,
    get_hardware,
    get_model,
    get_preset,
    hardware_of_profile,
    load_presets,
    model_names,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

FILE_KEYS = ("name", "description", "runs", "label")
_SECTIONS = {
    "method": MethodSpec,
    "model": ModelShape,
    "hardware": Hardware,
    "latency": LatencySpec,
    "acceptance": AcceptanceSpec,
    "overheads": Overheads,
    "workload": Workload,
}


@dataclass(frozen=True)
class NamedScenario:
    """One run of a comparison: a label for tables and file rows, and its validated Scenario."""

    label: str
    scenario: Scenario


def default_scenario_path() -> Path:
    return Path(__file__).parent.parent / "scenarios" / "default.toml"


# ---------------------------------------------------------------------------------------------- reading


def read_scenario_file(path: str | Path) -> dict[str, Any]:
    """Parse a TOML or JSON scenario file into a plain dict (no validation yet)."""
    path = Path(path)
    if not path.is_file():
        raise SpdsimError(f"scenario: no such file '{path}'")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpdsimError(f"scenario: '{path}' is not a text file (TOML or JSON in UTF-8)") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise SpdsimError(f"scenario: '{path}' must end in .toml or .json")
    except json.JSONDecodeError as exc:
        raise SpdsimError(f"scenario: '{path}' is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpdsimError(f"scenario: '{path}' is not valid TOML ({exc})") from None
    if not isinstance(data, dict):
        raise SpdsimError(f"scenario: '{path}' must hold a table/object at the top level")
    return data


def parse_value(text: str) -> Any:
    """Value of a ``--set`` override: JSON literal, comma list, or a bare string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if text.lower() in ("nan", "inf", "-inf"):
        return float(text)
    if "," in text:
        return [parse_value(part.strip()) for part in text.split(",") if part.strip()]
    return text


def parse_override(text: str) -> tuple[list[str], Any]:
    """``method.num_stages=16`` -> (["method", "num_stages"], 16)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SpdsimError(f"--set: expected KEY=VALUE such as method.num_stages=16, got {text!r}")
    return key.strip().split("."), parse_value(value.strip())


def set_path(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set a dotted key in a scenario dict, expanding embedded model/hardware names on the way."""
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if isinstance(child, str) and depth == 0 and key in ("model", "hardware"):
            child = _expand_named(key, child)
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise SpdsimError(f"--set {'.'.join(keys)}: '{'.'.join(keys[: depth + 1])}' is not a table")
        node[key] = child
        node = child
    node[keys[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``raw`` with every ``KEY=VALUE`` override set."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        set_path(raw, keys, value)
    return raw


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if key != "acceptance" and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def expand_runs(raw: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, scenario dict) for every ``[[runs]]`` entry merged onto the base; the base alone if none."""
    allowed = {f.name for f in fields(Scenario)} | set(FILE_KEYS)
    for key in raw:
        if key not in allowed:
            raise SpdsimError(f"scenario: unknown field '{key}' (allowed: {', '.join(sorted(allowed))})")
    base = {k: v for k, v in raw.items() if k not in FILE_KEYS}
    runs = raw.get("runs") or [{}]
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise SpdsimError("scenario.runs: must be a list of tables")
    expanded = []
    for run in runs:
        label = run.get("label", raw.get("label", ""))
        if not isinstance(label, str):
            raise SpdsimError("scenario.runs.label: must be a string")
        expanded.append((label, _deep_merge(base, {k: v for k, v in run.items() if k != "label"})))
    return expanded


# ------------------------------------------------------------------------------------------- resolution


def _expand_named(section: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    shape = get_model(value) if section == "model" else get_hardware(value)
    data = {f.name: getattr(shape, f.name) for f in fields(shape)}
    return data


def resolve_acceptance(acceptance: dict[str, Any], presets: dict[str, AcceptancePreset]) -> dict[str, Any]:
    """Preset values first, explicit keys on top; the preset name stays as provenance."""
    name = acceptance.get("preset", "")
    if not name:
        if acceptance.get("kind") == "preset":
            raise SpdsimError("acceptance.preset: kind 'preset' needs a preset name (see `spdsim list`)")
        return acceptance
    if not isinstance(name, str):
        raise SpdsimError("acceptance.preset: must be a preset name")
    preset = get_preset(name, presets)
    merged = dict(preset.acceptance)
    merged.update({k: v for k, v in acceptance.items() if not (k == "kind" and v == "preset")})
    merged.setdefault("kind", "iid")
    return merged


def _coerce(value: Any, hint: Any, where: str) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise SpdsimError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise SpdsimError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise SpdsimError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise SpdsimError(f"{where}: expected a string, got {value!r}")
        return value
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise SpdsimError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    return value


def _build_section(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise SpdsimError(f"{where}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise SpdsimError(f"{where}.{key}: unknown field (allowed: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    missing = [
        f.name
        for f in fields(cls)
        if f.name not in kwargs and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        raise SpdsimError(f"{where}: missing field(s) {', '.join(missing)}")
    return cls(**kwargs)


def build_scenario(raw: dict[str, Any], presets: dict[str, AcceptancePreset] | None = None) -> Scenario:
    """Scenario dataclasses from one run's dict: names resolved, types checked, values validated."""
    presets = load_presets() if presets is None else presets
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in FILE_KEYS:
            continue
        if key == "seed":
            kwargs["seed"] = _coerce(value, int, "seed")
            continue
        if key not in _SECTIONS:
            allowed = ", ".join([*_SECTIONS, "seed"])
            raise SpdsimError(f"scenario: unknown field '{key}' (allowed: {allowed})")
        if value is None and key in ("model", "hardware"):
            continue
        value = _expand_named(key, value)
        if key == "acceptance" and isinstance(value, dict):
            value = resolve_acceptance(value, presets)
        kwargs[key] = _build_section(_SECTIONS[key], value, key)
    return check_memory(check_bounds(validate_scenario(Scenario(**kwargs))))


def default_label(method: MethodSpec) -> str:
    name = method.name
    if name == "spd":
        label = f"spd-n{method.num_stages}-l{method.spec_layers}"
        return label + ("-colocated" if method.drafter_placement == "stage0" else "")
    if name == "ppsd":
        return f"ppsd-n{method.num_stages}"
    if name == "ar":
        return "ar" if method.tensor_parallel == 1 else f"ar-tp{method.tensor_parallel}"
    if name == "specdecpp":
        return f"specdecpp-h{method.stop_threshold:g}"
    label = f"{name}-k{method.draft_tokens}"
    return label + (f"-tp{method.tensor_parallel}" if method.tensor_parallel > 1 else "")


def _apply_acceptance_preset(run: dict[str, Any], preset: AcceptancePreset) -> None:
    """The preset's acceptance, the method knobs it was measured at and, if embedded, its model's shape."""
    run["acceptance"] = {"preset": preset.name}
    method = run.setdefault("method", {})
    method.update({k: v for k, v in preset.method.items()})
    model = preset.name.split("/", 1)[0]
    if model in model_names():
        run["model"] = model


def load_runs(
    paths: Sequence[str | Path | dict[str, Any]] = (),
    overrides: list[str] | tuple[str, ...] = (),
    acceptance: str | None = None,
    profile: str | None = None,
    methods: list[str] | tuple[str, ...] = (),
    preset_dirs: tuple[str | Path, ...] = (),
) -> list[NamedScenario]:
    """Everything the CLI needs: files (or the embedded default) -> labelled, validated Scenarios.

    Order: merge runs, ``--method`` selection, ``--acceptance`` preset (applied to runs of the preset's method,
    with the method knobs it was measured at), ``--profile``, then ``--set`` overrides, then validation.
    """
    presets = load_presets(preset_dirs)
    files = list(paths) or [default_scenario_path()]
    labelled: list[tuple[str, dict[str, Any]]] = []
    for index, path in enumerate(files):
        # a dict is a scenario file's content, built in Python (spdsim.api)
        raw = copy.deepcopy(path) if isinstance(path, dict) else read_scenario_file(path)
        runs = expand_runs(raw)
        if len(files) > 1:
            stem = f"scenario{index}" if isinstance(path, dict) else Path(path).stem
            runs = [(f"{stem}:{label}" if label else "", run) for label, run in runs]
        labelled.extend(runs)
    if methods:
        labelled = _select_methods(labelled, methods)
    if acceptance and acceptance.count("/") == 1 and acceptance not in presets:
        _switch_dataset(labelled, acceptance, presets)
    elif acceptance:
        preset = get_preset(acceptance, presets)
        targets = [
            i
            for i, (_, run) in enumerate(labelled)
            if run.get("method", {}).get("name", "spd") == preset.method["name"]
        ]
        check(
            bool(targets),
            f"--acceptance: preset '{acceptance}' is for method '{preset.method['name']}', which no run uses",
        )
        for index in targets:
            _apply_acceptance_preset(labelled[index][1], preset)
            labelled[index] = ("", labelled[index][1])  # its knobs changed: label it afresh
    if profile:
        labelled = _apply_profile(labelled, profile, presets)
    named = []
    for label, run in labelled:
        before = _label_of_knobs(run)
        run = apply_overrides(run, overrides)
        latency = run.get("latency", {})
        check(
            not (
                profile and latency.get("kind") in ("measured", "fitted") and not latency.get("profile_path")
            ),
            f"latency.kind: {latency.get('kind')} for run '{label or before}', which --profile leaves on the roofline "
            "(a profile holds one GPU, the run is tensor-parallel): use a scenario without tensor-parallel runs",
        )
        scenario = build_scenario(run, presets)
        if label and label == before and overrides:
            label = ""  # the label only spelled out the knobs, which --set may have changed: derive it again
        named.append(NamedScenario(label or default_label(scenario.method), scenario))
    return _unique_labels(named)


def _label_of_knobs(run: dict[str, Any]) -> str | None:
    """The default label of a run's method before ``--set`` (None if its method table is not valid yet)."""
    try:
        return default_label(_build_section(MethodSpec, run.get("method", {}), "method"))
    except SpdsimError:
        return None


def _switch_dataset(
    labelled: list[tuple[str, dict[str, Any]]], model_dataset: str, presets: dict[str, AcceptancePreset]
) -> None:
    """``--acceptance MODEL/DATASET``: every run whose preset is ``MODEL/<any>/<config>`` moves to DATASET."""
    model, dataset = model_dataset.split("/")
    switched = 0
    for _, run in labelled:
        name = run.get("acceptance", {}).get("preset", "")
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == model and f"{model}/{dataset}/{parts[2]}" in presets:
            run["acceptance"] = {**run["acceptance"], "preset": f"{model}/{dataset}/{parts[2]}"}
            switched += 1
    if not switched:
        datasets = sorted({n.split("/")[1] for n in presets if n.startswith(f"{model}/")})
        raise SpdsimError(
            f"--acceptance: no run has a '{model}/...' preset with a '{dataset}' variant "
            f"(datasets of {model}: {', '.join(datasets) or 'none'})"
        )


def _apply_profile(
    labelled: list[tuple[str, dict[str, Any]]], profile: str, presets: dict[str, AcceptancePreset]
) -> list[tuple[str, dict[str, Any]]]:
    """Measured latencies (and the measured model's shape and GPU) for every run; a profile holds one GPU, so
    tensor-parallel runs keep the roofline (of the same shape and GPU) and say so in their label. An acceptance
    preset of another model follows the measured one where it has the same preset (same dataset and knobs)."""
    bundle = load_profile(profile)
    shape = {k: v for k, v in bundle["model"].items() if k in {f.name for f in fields(ModelShape)}}
    hardware = hardware_of_profile(str(bundle.get("hardware", {}).get("name", "")))
    measured_model = str(bundle["model"].get("name", "")).removeprefix("random:")
    updated = []
    for label, run in labelled:
        run["model"] = dict(shape)
        acceptance = run.get("acceptance")
        if isinstance(acceptance, dict) and isinstance(acceptance.get("preset"), str):
            _, _, rest = acceptance["preset"].partition("/")
            if f"{measured_model}/{rest}" in presets:
                run["acceptance"] = {**acceptance, "preset": f"{measured_model}/{rest}"}
        if hardware is not None:  # the measured GPU, so rooflines beside it and the title name the same one
            run["hardware"] = hardware
        if run.get("method", {}).get("tensor_parallel", 1) > 1:
            label = f"{label or default_label(_build_section(MethodSpec, run.get('method', {}), 'method'))} [roofline]"
        else:
            run["latency"] = {**run.get("latency", {}), "kind": "measured", "profile_path": str(profile)}
        updated.append((label, run))
    return updated


def _select_methods(labelled: list[tuple[str, dict[str, Any]]], methods: tuple[str, ...] | list[str]):
    selected: list[tuple[str, dict[str, Any]]] = []
    for wanted in methods:
        matches = [
            (label, run)
            for label, run in labelled
            if wanted in (label, run.get("method", {}).get("name", "spd"))
        ]
        if not matches:
            check(wanted in METHODS, f"--method: unknown method '{wanted}' (allowed: {', '.join(METHODS)})")
            label, run = labelled[0]
            run = copy.deepcopy(run)
            run["method"] = {**run.get("method", {}), "name": wanted}
            matches = [("", run)]
        selected.extend((label, copy.deepcopy(run)) for label, run in matches)
    return selected


def _unique_labels(named: list[NamedScenario]) -> list[NamedScenario]:
    seen: dict[str, int] = {}
    unique = []
    for item in named:
        count = seen.get(item.label, 0) + 1
        seen[item.label] = count
        unique.append(item if count == 1 else NamedScenario(f"{item.label}#{count}", item.scenario))
    return unique


def scenario_to_run_dict(label: str, scenario: Scenario) -> dict[str, Any]:
    """A fully resolved run entry (what ``config.json`` stores under ``runs``)."""
    from spdsim.scenario.config import to_dict

    return {"label": label, **to_dict(scenario)}
