"""spdsim: discrete-event simulator of Speculative Pipeline Decoding and speculative-decoding baselines.

Public API (``spdsim.api``): ``simulate``, ``compare`` and ``sweep`` take a scenario (path, dict or
``Scenario``) with overrides and return results and pandas DataFrames; ``Scenario`` and its parts are the frozen
dataclasses of ``spdsim.scenario.config``, checked where they are built; ``SpdsimError`` is the one-line error.
"""

__version__ = "0.1.0"

from spdsim.api import Simulation, compare, simulate, sweep  # noqa: E402
from spdsim.errors import SpdsimError  # noqa: E402
from spdsim.scenario.config import (  # noqa: E402
    AcceptanceSpec,
    Hardware,
    LatencySpec,
    MethodSpec,
    ModelShape,
    Overheads,
    Scenario,
    Workload,
)

__all__ = [
    "AcceptanceSpec",
    "Hardware",
    "LatencySpec",
    "MethodSpec",
    "ModelShape",
    "Overheads",
    "Scenario",
    "Simulation",
    "SpdsimError",
    "Workload",
    "__version__",
    "compare",
    "simulate",
    "sweep",
]
