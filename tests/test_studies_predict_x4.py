"""studies/fidelity/predict_x4.py: the unmeasured 4-GPU configurations priced from the committed 1-/2-GPU calibration."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

STUDIES = Path(__file__).resolve().parent.parent / "studies"


def test_predictions_cover_every_configuration_and_follow_acceptance():
    spec = importlib.util.spec_from_file_location("study_predict_x4", STUDIES / "fidelity" / "predict_x4.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    table = module.predict()
    assert set(table.configuration) == set(module.CONFIGS)
    ar = table[table.configuration == "AR (1 GPU)"].iloc[0]
    assert ar.speedup_vs_ar == 1.0
    for label in table.configuration[table.alpha.notna()].unique():
        rows = table[table.configuration == label].sort_values("alpha")
        assert rows.rho.is_monotonic_increasing and rows.tpot_ms.is_monotonic_decreasing
    # what the committed table says is what the committed profile gives
    committed = (STUDIES / "fidelity" / "results" / "x4" / "predictions_4gpu.csv").read_text()
    assert committed.splitlines()[0].startswith("configuration,gpus,alpha")
    assert len(committed.splitlines()) == len(table) + 1
