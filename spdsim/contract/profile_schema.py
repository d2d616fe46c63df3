"""The profile bundle: measured per-phase latencies, written by the executor, read by the simulator.

Schema version 1 (JSON object)::

    {
      "schema_version": 1,
      "kind": "spdsim.profile",
      "hardware": {"name": "nvidia-h100", "gpu": "NVIDIA H100 80GB HBM3", "driver": "...",
                   "copy_bandwidth_gbps": 3020.0, "count": 1},
      "model": {ModelShape fields: name, num_layers, hidden_size, ...},
      "dtype": "bfloat16",
      "software": {"torch": "2.11.0", "transformers": "5.17.0", "cuda": "13.0", "python": "3.12"},
      "date": "2026-11-22",
      "source": "executor/profile.py random:qwen3-4b",
      "phases": {
        "<phase>": [ {<coordinates...>, "median_us": float, "p10_us": float, "p90_us": float, "samples": int}, ... ]
      }
    }

Phases and their numeric coordinates (every coordinate present in every entry of that phase):

=================  ==========================================  ==============================================
phase              coordinates                                 what is timed
=================  ==========================================  ==============================================
``layers``         layers, query_tokens, kv_len                ``layers`` consecutive decoder layers (a stage)
``embed``          query_tokens                                token embedding
``head``           query_tokens                                final norm + lm_head + greedy verify
``ar_step``        kv_len                                      one whole AR decode step (embed..sample)
``drafter``        spec_layers, query_tokens, kv_len           SPD PDM forward (aggr + L_s layers + lm_head)
``chain_draft``    draft_layers, kv_len                        one serial chain-drafter pass (EAGLE-3 style)
``p2p``            bytes                                       point-to-point hidden-state send
``cycle_fixed``    num_stages                                  serial per-cycle cost outside the phases above
``verify_fixed``   num_stages                                  pipeline verification cycle's serial cost beyond
                                                               ``head`` (last stage's output receive, decision)
``chain_fixed``    draft_tokens                                chain iteration's serial cost beyond K drafter
                                                               passes + the verify (host sync, the first pass's
                                                               extra rows, the on-device acceptance)
``colocated_contention``  num_stages                           SPD drafter ∥ stage 0 on one GPU (see below)
``layers_tp``      tp_degree, layers, query_tokens, kv_len     one rank's shard of ``layers`` layers under
                                                               tp_degree-way tensor parallelism, no all-reduce
``allreduce``      tp_degree, bytes                            one all-reduce of ``bytes`` over tp_degree GPUs
``host_issue``     graphs                                      host time to launch ``graphs`` captured graphs
                                                               back to back (input copies included, no sync)
``stream_overlap`` streams                                     g concurrent decode streams on one GPU (below)
=================  ==========================================  ==============================================

A reader interpolates linearly along each coordinate between measured points and refuses (a ``ProfileError``
naming the phase and coordinate range) to extrapolate outside them.

``colocated_contention`` is dimensionless: the contention factor c in [0, 1] of an SPD drafter running on its own
stream beside stage 0 on one GPU (together they keep it busy max(a, b) + c·min(a, b); 1 = back to back, 0 =
perfect overlap), stored in the stat fields as µs added per ms of the shorter of the two (``median_us`` = 1000·c).
``stream_overlap`` is dimensionless too, and profiled (``executor/profile_overlap.py``), not fitted: the factor c(g)
in [0, 1] of ``streams`` = g members issued at once, each on its own CUDA stream of one GPU (the model's layers split
into g stages): they keep it busy max(t) + c·(Σt − max t); stored as ``median_us`` = 1000·c. Its entries also
carry the raw times (``concurrent_us``, ``serial_us``, ``longest_alone_us``) and the ``layers`` / ``kv_len`` they
were measured at. A reader takes the nearest measured g outside the measured ones; without the phase c = 1.

``verify_fixed``, ``cycle_fixed``, ``chain_fixed`` and ``colocated_contention`` are fitted from runs by ``spdsim
calibrate``; outside the stage counts (draft lengths) they were fitted at, a reader takes the nearest fitted one (a
held-out n or K is priced with what calibration saw) instead of refusing.

Tensor parallelism: a TP step is embed + ``layers_tp`` + 2 ``allreduce`` per layer + head. ``spdsim calibrate``
fits a ring model t = a·(d−1) + b·2(d−1)/d·bytes to the measured ``allreduce`` degrees and stores it in the
optional top-level ``"allreduce_fit"`` (``{"coefficients": {"ring_steps": a_us, "ring_bytes": b_us_per_byte},
"degrees": [...], "rule": ...}``); the measured reader uses it, and only it, for a degree the table lacks.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from spdsim.contract.vocabulary import PHASES
from spdsim.errors import SpdsimError

SCHEMA_VERSION = 1
PROFILE_KIND = "spdsim.profile"
PHASE_COORDINATES: dict[str, tuple[str, ...]] = {
    "layers": ("layers", "query_tokens", "kv_len"),
    "embed": ("query_tokens",),
    "head": ("query_tokens",),
    "ar_step": ("kv_len",),
    "drafter": ("spec_layers", "query_tokens", "kv_len"),
    "chain_draft": ("draft_layers", "kv_len"),
    "p2p": ("bytes",),
    "cycle_fixed": ("num_stages",),
    "verify_fixed": ("num_stages",),
    "chain_fixed": ("draft_tokens",),
    "colocated_contention": ("num_stages",),
    "layers_tp": ("tp_degree", "layers", "query_tokens", "kv_len"),  # kv_len last: readers take arrays
    "allreduce": ("tp_degree", "bytes"),
    "host_issue": ("graphs",),
    "stream_overlap": ("streams",),
}
assert tuple(PHASE_COORDINATES) == PHASES, "the profile phases are the contract's PHASES"
STAT_FIELDS = ("median_us", "p10_us", "p90_us", "samples")
REQUIRED_TOP = ("schema_version", "kind", "hardware", "model", "dtype", "software", "date", "phases")


class ProfileError(SpdsimError):
    """A profile file that does not follow the schema; the message names the field."""


def validate_profile(data: Any) -> dict[str, Any]:
    """Check a parsed profile against schema v1 and return it unchanged."""
    if not isinstance(data, dict):
        raise ProfileError("profile: top level must be a JSON object")
    for key in REQUIRED_TOP:
        if key not in data:
            raise ProfileError(f"profile: missing field '{key}'")
    if data["kind"] != PROFILE_KIND:
        raise ProfileError(f"profile.kind: expected '{PROFILE_KIND}', got {data['kind']!r}")
    if data["schema_version"] != SCHEMA_VERSION:
        raise ProfileError(
            f"profile.schema_version: this spdsim reads version {SCHEMA_VERSION}, got {data['schema_version']!r}"
        )
    for key in ("model", "hardware"):
        if key in data and not isinstance(data[key], dict):
            raise ProfileError(f"profile.{key}: must be an object with named fields, got {data[key]!r:.60}")
    phases = data["phases"]
    if not isinstance(phases, dict) or not phases:
        raise ProfileError("profile.phases: must be a non-empty object")
    for phase, entries in phases.items():
        if phase not in PHASE_COORDINATES:
            raise ProfileError(
                f"profile.phases: unknown phase '{phase}' (allowed: {', '.join(PHASE_COORDINATES)})"
            )
        if not isinstance(entries, list) or not entries:
            raise ProfileError(f"profile.phases.{phase}: must be a non-empty list")
        for i, entry in enumerate(entries):
            for key in PHASE_COORDINATES[phase] + STAT_FIELDS:
                value = entry.get(key) if isinstance(entry, dict) else None
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                    raise ProfileError(f"profile.phases.{phase}[{i}].{key}: missing or not a finite number")
                if value < 0:
                    raise ProfileError(f"profile.phases.{phase}[{i}].{key}: negative ({value})")
    if "allreduce_fit" in data:
        _validate_allreduce_fit(data["allreduce_fit"])
    return data


def _validate_allreduce_fit(fit: Any) -> None:
    coefficients = fit.get("coefficients") if isinstance(fit, dict) else None
    for term in ("ring_steps", "ring_bytes"):
        value = coefficients.get(term) if isinstance(coefficients, dict) else None
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ProfileError(
                f"profile.allreduce_fit.coefficients.{term}: missing or not a finite number >= 0"
            )


def embedded_profiles() -> dict[str, Path]:
    """Measured bundles shipped with spdsim (``spdsim/profiles/measured/<model>_<gpu>.json``), by name."""
    folder = Path(str(resources.files("spdsim") / "profiles" / "measured"))
    return {p.stem: p for p in sorted(folder.glob("*.json"))}


def load_profile(path: str | Path) -> dict[str, Any]:
    """Read and validate a profile JSON file, or an embedded measured profile by name (``spdsim list profiles``)."""
    path = Path(path)
    if not path.is_file():
        embedded = embedded_profiles()
        if str(path) not in embedded:
            raise ProfileError(
                f"profile: no such file '{path}' and no embedded profile of that name "
                f"(embedded: {', '.join(embedded) or 'none'})"
            )
        path = embedded[str(path)]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ProfileError(f"profile: '{path}' is not a text file (JSON in UTF-8)") from None
    except json.JSONDecodeError as exc:
        raise ProfileError(f"profile: '{path}' is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return validate_profile(data)
