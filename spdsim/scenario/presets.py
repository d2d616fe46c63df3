"""Embedded hardware profiles, model shapes and acceptance presets, each with the source of its numbers.

Data lives as JSON under ``spdsim/profiles/{hardware,models,presets}/``. A hardware file holds the simulated
fields of ``Hardware`` and a ``datasheet`` block (the vendor's published figures and their address; a variant
names the catalogue entry whose GPU it uses); a model file is a HF ``config.json`` copied from a published one
(``_source``), read by ``spdsim.contract.model_config``, which also reads a user's config by path. Acceptance presets are read from every
``*.json`` in ``profiles/presets/`` (and from extra directories a caller names), so adding measured presets is a
file drop. A preset either states its acceptance directly or derives it from a published figure
(``derive``), so the JSON records the number that was published, not our arithmetic on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

from spdsim.contract.model_config import (
    embedded_model_names,
    model_shape,
    read_model_config,
    text_config,
)
from spdsim.contract.presets_file import (  # noqa: F401 (the format's names, re-exported)
    DERIVATIONS,
    PRESET_FILE_KIND,
    PRESET_SCHEMA_VERSION,
    AcceptancePreset,
    _read_json,
    alpha_from_pipeline_speedup,
    read_preset_file,
)
from spdsim.contract.profile_schema import embedded_profiles, load_profile
from spdsim.errors import SpdsimError
from spdsim.formulas import alpha_from_chain_tau, alpha_from_sd_speedup  # noqa: F401
from spdsim.scenario.config import Hardware, ModelShape


def profiles_root() -> Path:
    return Path(str(resources.files("spdsim") / "profiles"))


def _named_files(kind: str) -> dict[str, Path]:
    return {p.stem: p for p in sorted((profiles_root() / kind).glob("*.json"))}


def _build(cls: type, data: dict[str, Any], what: str) -> Any:
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - allowed - {"source", "datasheet"})
    if unknown:
        raise SpdsimError(f"{what}: unknown field '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")
    return cls(**{k: v for k, v in data.items() if k in allowed})


def hardware_names() -> list[str]:
    return list(_named_files("hardware"))


def model_names() -> list[str]:
    return embedded_model_names()


def hardware_source(name: str) -> str:
    return _read_json(_lookup("hardware", name, "hardware"), "hardware").get("source", "")


def model_source(name: str) -> str:
    """Where an embedded model's config was copied from (its ``_source``), and any notes on it."""
    config = read_model_config(name)[1]
    return "; ".join(str(config[key]) for key in ("_source", "_notes") if config.get(key))


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


def hardware_of_profile(profile_hardware: str) -> str | None:
    """The embedded hardware a measured bundle's GPU is (``nvidia-h200`` -> ``h200``), or None: runs priced by a
    bundle then keep their own hardware for what the bundle does not hold (tensor-parallel rooflines, the title)."""
    name = profile_hardware.lower().removeprefix("nvidia-")
    return name if name in _named_files("hardware") else None


def get_model(name: str) -> ModelShape:
    """A model shape by embedded name (``qwen3.5-4b``, ``llama-3.1-8b``, ...) or from a HF ``config.json`` path
    (or a directory holding one); ``spdsim.contract.model_config`` reads both."""
    return model_shape(name)


def hardware_datasheet(name: str) -> dict[str, Any]:
    """The datasheet block of a hardware file: the GPU's published figures and their source; a variant (two
    nodes, host-overhead regimes) names the catalogue entry whose GPU it uses."""
    sheet = _read_json(_lookup("hardware", name, "hardware"), "hardware").get("datasheet", {})
    if isinstance(sheet, str):
        return hardware_datasheet(sheet)
    return dict(sheet)


def _hardware_row(name: str) -> tuple[str, ...]:
    """A catalogue row: the datasheet's figures and its address; a variant (a file whose datasheet names
    another entry) shows its own source text, which says what it changes."""
    hw = get_hardware(name)
    data = _read_json(_lookup("hardware", name, "hardware"), "hardware")
    sheet = hardware_datasheet(name)
    if not sheet:
        return (
            name,
            "-",
            f"{hw.memory_gib:g}",
            f"{hw.mem_bandwidth_gbps:g}",
            f"{hw.peak_tflops:g}",
            "-",
            hw.source,
        )
    bandwidth = f"{sheet['memory_bandwidth_gbps']:g}"
    if hw.stream_bandwidth_gbps != sheet["memory_bandwidth_gbps"]:
        bandwidth += f" (simulated {hw.stream_bandwidth_gbps:g})"
    fp8 = f"{sheet['fp8_dense_tflops']:g}" if sheet.get("fp8_dense_tflops") else "-"
    links = f"{sheet['intra_node_bandwidth_gbps']:g} / {sheet['inter_node_bandwidth_gbps']:g}"
    variant = isinstance(data.get("datasheet"), str)
    source = f"as {data['datasheet']}: {hw.source}" if variant else sheet["url"]
    peaks = f"{sheet['bf16_dense_tflops']:g} / {fp8}"
    return (name, sheet["gpu"], f"{sheet['memory_gib']:g}", bandwidth, peaks, links, source)


# ---------------------------------------------------------------------------------------------- derivations


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

# `spdsim list` adds "methods" (the methods registry's)
CATALOG_SECTIONS = ("hardware", "models", "presets", "profiles")


def catalog(section: str) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """(headers, rows) describing one section of what is embedded, for `spdsim list` (the "methods" section is
    the methods registry's, ``spdsim.methods.catalog``: the scenario layer does not import the methods)."""
    if section == "hardware":
        rows: list[tuple[str, ...]] = []
        for name in hardware_names():
            rows.append(_hardware_row(name))
        headers = (
            "hardware",
            "GPU",
            "memory GB",
            "bandwidth GB/s",
            "BF16 / FP8 dense TFLOPS",
            "intra / inter-node GB/s",
            "source",
        )
        return headers, rows
    if section == "models":
        rows = []
        for name in model_names():
            m = get_model(name)
            config = text_config(read_model_config(name)[1])
            kind = str(config.get("model_type", "?"))
            if m.linear_attention_layers:
                kind += f", {m.linear_attention_layers}/{m.num_layers} DeltaNet"
            if m.num_experts:
                kind += f", {m.experts_per_token}/{m.num_experts} experts"
            shape = (
                f"L={m.num_layers} H={m.hidden_size} q/kv={m.num_attention_heads}/{m.num_kv_heads} "
                f"I={m.intermediate_size} V={m.vocab_size}"
            )
            rows.append((name, kind, shape, model_source(name)))
        return ("model", "type", "shape", "source"), rows
    if section == "presets":
        rows = []
        for preset in load_presets().values():
            acc = preset.acceptance
            value = f"r={list(acc['rates'])}" if acc.get("rates") else f"alpha={acc.get('alpha', '-')}"
            rows.append((preset.name, value, preset.source))
        return ("preset", "acceptance", "source"), rows
    if section == "profiles":
        rows = []
        for name in embedded_profiles():
            bundle = load_profile(name)
            phases = ", ".join(f"{phase} {len(entries)}" for phase, entries in bundle["phases"].items())
            gpu = f"{bundle['hardware'].get('gpu', '?')} ({bundle['dtype']}, {bundle['date']})"
            rows.append(
                (name, str(bundle["model"].get("name", "?")), gpu, phases, str(bundle.get("source", "")))
            )
        return ("profile", "model", "measured on", "phases (entries)", "source"), rows
    raise SpdsimError(f"list: unknown section '{section}' (allowed: {', '.join(CATALOG_SECTIONS)})")
