"""The contract between the simulator (``spdsim``) and the executor: everything the executor may import from
``spdsim``, and nothing else.

- one vocabulary: method names, drafter placement, cycle states, phase names (``vocabulary``);
- the model shape (``shape``) and how it is read from a HF ``config.json``, the embedded model files included
  (``model_config``: the simulator's shapes and the executor's ``random:`` presets read the same files);
- the optional extras of the install and the one-line error naming a missing one (``extras``);
- the profile bundle schema (``profile_schema``), the per-verification trace columns (``trace``) and the
  acceptance-presets file format (``read_preset_file``);
- the run directory: its two kinds and their files (``rundir``), how files are written (``files``: checked paths, atomic writes), the Chrome trace both kinds write (``chrome_trace``) and how a run's realised
  acceptance is summarised (``realised``);
- the error a user mistake raises and the CLI boundary that turns it into one line (``SpdsimError``,
  ``user_errors``; ``write_log`` and ``EXIT_BUG`` for a failure that is no user mistake).

The simulator never imports the executor; the executor imports ``spdsim.contract`` only (a test checks both).
"""

from __future__ import annotations

from typing import Any

from spdsim.boundary import EXIT_BUG, user_errors, write_log
from spdsim.contract.files import (
    check_out_dir,
    check_out_file,
    write_atomically,
    write_dir,
    write_file,
    write_text_file,
)
from spdsim.contract.profile_schema import PHASE_COORDINATES, PROFILE_KIND, SCHEMA_VERSION, validate_profile
from spdsim.contract.realised import realised_acceptance, realised_warning
from spdsim.contract.rundir import (
    MEASURED_FILES,
    SERVING_TRACE,
    SIMULATED_FILES,
    require_measured,
    require_scenario,
    run_kind,
)
from spdsim.contract.shape import ModelShape, uneven_counts
from spdsim.contract.trace import TRACE_COLUMNS
from spdsim.contract.vocabulary import (
    CYCLE_STATES,
    DRAFTER_FROM_EXECUTOR,
    DRAFTER_PLACEMENTS,
    EXECUTOR_DRAFTER_PLACEMENTS,
    METHODS,
    PHASES,
    PIPELINE_METHODS,
    TRACE_STATES,
    VERIFY_PLACEMENTS,
    placement_from_executor,
)
from spdsim.errors import SpdsimError

_LAZY = {  # the presets file format reads scenario fields: loaded on first use, so that spdsim.scenario may
    # import the contract's vocabulary and shape without a circle
    "PRESET_FILE_KIND": "spdsim.contract.presets_file",
    "PRESET_SCHEMA_VERSION": "spdsim.contract.presets_file",
    "AcceptancePreset": "spdsim.contract.presets_file",
    "read_preset_file": "spdsim.contract.presets_file",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spdsim.contract' has no attribute '{name}'")


__all__ = [
    "EXIT_BUG",
    "write_log",
    "CYCLE_STATES",
    "DRAFTER_FROM_EXECUTOR",
    "DRAFTER_PLACEMENTS",
    "VERIFY_PLACEMENTS",
    "EXECUTOR_DRAFTER_PLACEMENTS",
    "MEASURED_FILES",
    "METHODS",
    "PHASES",
    "PHASE_COORDINATES",
    "PIPELINE_METHODS",
    "PRESET_FILE_KIND",
    "PRESET_SCHEMA_VERSION",
    "PROFILE_KIND",
    "SCHEMA_VERSION",
    "SERVING_TRACE",
    "SIMULATED_FILES",
    "TRACE_COLUMNS",
    "uneven_counts",
    "TRACE_STATES",
    "AcceptancePreset",
    "ModelShape",
    "SpdsimError",
    "check_out_dir",
    "check_out_file",
    "placement_from_executor",
    "read_preset_file",
    "realised_acceptance",
    "realised_warning",
    "require_measured",
    "require_scenario",
    "run_kind",
    "user_errors",
    "validate_profile",
    "write_atomically",
    "write_dir",
    "write_file",
    "write_text_file",
]
