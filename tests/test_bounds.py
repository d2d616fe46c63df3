"""spdsim.scenario.bounds: scenarios too large to simulate in minutes and GBs are refused where they are built."""

from __future__ import annotations

import pytest

from spdsim.errors import SpdsimError
from spdsim.scenario.bounds import MAX_TOKENS
from spdsim.scenario.files import load_runs


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("workload.num_requests=1000000000", "workload.num_requests: 1e\\+09 exceeds"),
        ("workload.new_tokens=1000000000000", "workload.new_tokens: 1e\\+12 exceeds"),
        ("workload.num_requests=5000", f"exceeds {MAX_TOKENS:,} tokens per run"),
        ("method.k_max=1000000000", "method.k_max: 1e\\+09 exceeds the limit of 256"),
        ("overheads.fixed_cycle_ns=1e30", "overheads.fixed_cycle_ns: 1e\\+30 exceeds"),
        ("overheads.jitter_cv=1e300", "overheads.jitter_cv: 1e\\+300 exceeds the limit of 10"),
        ("seed=-1", "seed: must be in 0..2\\*\\*63-1"),
        ("hardware.mem_bandwidth_gbps=1e-300", "model/hardware: reading .* bytes of weights per token"),
    ],
)
def test_limits_name_the_field(override, message):
    with pytest.raises(SpdsimError, match=message):
        load_runs(overrides=[override])


def test_the_limits_leave_the_default_and_a_long_run_alone():
    runs = load_runs(overrides=["workload.new_tokens=100000", "workload.num_requests=10"])
    assert all(r.scenario.workload.new_tokens == 100000 for r in runs)
