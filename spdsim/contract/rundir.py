"""The run directory: one layout, two kinds, told apart by their files.

Both halves write ``config.json``, ``tokens.csv`` (commit time of every token) and ``summary.json`` through
``spdsim.contract.files.write_dir`` (which adds the ``.spdsim`` marker). A *simulated* run adds ``trace.json``
(Chrome trace; ``trace.json.gz`` for serving runs and large traces) and its ``config.json`` is a scenario file;
a *measured* run (the executor) adds ``trace.csv`` (every verification, ``spdsim.contract.trace``),
``cycles.csv`` (per-cycle phase times) and ``timeline.json`` (Chrome trace of the measured phase intervals, one
process per prompt, one thread per phase), and its ``config.json`` holds the executor's options. Measured runs
written before ``timeline.json`` existed lack it: it is in ``MEASURED_FILES`` (what the executor writes), not in
``MEASURED_REQUIRED`` (what a reader needs). Every command reads both kinds: the ones that need the other kind
say so in one line, naming what is missing.
"""

from __future__ import annotations

from pathlib import Path

from spdsim.errors import SpdsimError

COMMON_FILES = ("config.json", "tokens.csv", "summary.json")
SIMULATED_FILES = (*COMMON_FILES, "trace.json")
SERVING_TRACE = "trace.json.gz"  # a simulated run's trace in place of trace.json: serving runs, large traces
MEASURED_FILES = (*COMMON_FILES, "trace.csv", "cycles.csv", "timeline.json")
MEASURED_REQUIRED = ("config.json", "tokens.csv", "cycles.csv")  # what a replay reads


def run_kind(path: str | Path) -> str | None:
    """``"measured"``, ``"simulated"`` or None (not a run directory of either kind)."""
    path = Path(path)
    if (path / "cycles.csv").is_file() or (path / "trace.csv").is_file():
        return "measured"
    if (
        (path / "trace.json").is_file()
        or (path / SERVING_TRACE).is_file()
        or (path / "config.json").is_file()
    ):
        return "simulated"
    return None


def require_measured(path: str | Path) -> Path:
    """``path`` if it is a measured run directory with every file; else one line naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise SpdsimError(f"run: no such run directory '{path}'")
    missing = [name for name in MEASURED_REQUIRED if not (path / name).is_file()]
    if missing:
        what = "a simulated run (trace.json)" if run_kind(path) == "simulated" else "not a measured run"
        raise SpdsimError(
            f"run '{path}': missing {', '.join(missing)} ({what}; measurements come from `spdsim exec run`)"
        )
    return path


def require_scenario(path: str | Path) -> Path:
    """The scenario file of a simulated run directory (its ``config.json``); a measured run has none."""
    path = Path(path)
    if run_kind(path) == "measured":
        raise SpdsimError(
            f"run directory '{path}' is a measured run (cycles.csv, trace.csv): it has no scenario (its config.json "
            f"holds executor options, no model, hardware or latency); replay it with `spdsim validate {path} "
            "--profile PROFILE`"
        )
    config = path / "config.json"
    if not config.is_file():
        raise SpdsimError(f"run directory '{path}' has no config.json")
    return config
