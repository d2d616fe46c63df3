"""Profile-driven latency models: measured (interpolated, no extrapolation) and fitted."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from sim_scenarios import TOY_SHAPE

from spdsim.contract.profile_schema import ProfileError
from spdsim.latency.build import build_latency_model
from spdsim.latency.profiled import fit_phase
from spdsim.scenario.config import LatencySpec, Scenario


def _entry(median_us, **coords):
    return {
        **coords,
        "median_us": median_us,
        "p10_us": median_us * 0.9,
        "p90_us": median_us * 1.1,
        "samples": 20,
    }


def _profile(tmp_path, phases, fit=None):
    data = {
        "schema_version": 1,
        "kind": "spdsim.profile",
        "hardware": {"name": "test-gpu"},
        "model": asdict(TOY_SHAPE),
        "dtype": "bfloat16",
        "software": {},
        "date": "2026-11-22",
        "phases": phases,
    }
    if fit is not None:
        data["fit"] = fit
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    return str(path)


def _layers_table():
    # per layer: 10 µs, +1 µs per 1k cached positions, +0.25 µs per extra query token
    return [
        _entry(layers * (10 + kv / 1_000 + 0.25 * (q - 1)), layers=layers, query_tokens=q, kv_len=kv)
        for layers in (2, 4, 8)
        for q in (1, 4)
        for kv in (0, 1_000, 4_000)
    ]


def _measured(tmp_path, kind="measured", fit=None, scenario_model=True):
    phases = {
        "layers": _layers_table(),
        "embed": [_entry(3.0, query_tokens=1), _entry(5.0, query_tokens=8)],
        "head": [_entry(40.0, query_tokens=1), _entry(48.0, query_tokens=9)],
    }
    spec = LatencySpec(kind=kind, profile_path=_profile(tmp_path, phases, fit))
    return build_latency_model(Scenario(model=TOY_SHAPE if scenario_model else None, latency=spec))


def test_measured_interpolates_linearly_inside_the_grid(tmp_path):
    latency = _measured(tmp_path)
    assert latency.layers_ns(4, 1, 1_000) == 44_000  # a grid point
    assert latency.layers_ns(4, 1, 2_500) == 50_000  # between kv points
    assert latency.layers_ns(3, 1, 0) == 30_000  # between layer counts
    assert latency.layers_ns(6, 1, 0) == 60_000
    assert latency.layers_ns(4, 2, 0) == 41_000  # between query-token counts (40 us at q=1, 43 us at q=4)
    assert latency.layers_ns(4, 1, np.array([0, 500, 4_000])).tolist() == [40_000, 42_000, 56_000]
    assert latency.embed_ns(1) == 3_000 and latency.head_ns(5) == 44_000
    assert _measured(tmp_path, scenario_model=False).shape == TOY_SHAPE


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda m: m.layers_ns(4, 1, 5_000),
            r"phases.layers: kv_len=5000 outside the measured range \[0, 4000\] \(no extrapolation\); keep "
            r"workload.prompt_tokens \+ workload.new_tokens within 4000",
        ),
        (lambda m: m.layers_ns(16, 1, 0), r"phases.layers: layers=16 outside the measured range \[2, 8\]"),
        (lambda m: m.layers_ns(4, 1, np.array([0, 9_000])), r"kv_len=\[0, 9000\] outside"),
        (lambda m: m.head_ns(16), r"phases.head: query_tokens=16 outside"),
        (lambda m: m.pdm_ns(2, 9, 0), r"needs phase 'drafter'"),
        (lambda m: m.layers_ns(4, 1, 0, tp=2), r"needs phase 'layers_tp'"),
    ],
)
def test_measured_refuses_to_extrapolate(tmp_path, call, message):
    with pytest.raises(ProfileError, match=message):
        call(_measured(tmp_path))


def test_measured_needs_a_full_grid(tmp_path):
    phases = {"layers": _layers_table()[:-1]}
    spec = LatencySpec(kind="measured", profile_path=_profile(tmp_path, phases))
    with pytest.raises(ProfileError, match="full grid"):
        build_latency_model(Scenario(model=TOY_SHAPE, latency=spec))


def test_fitted_recovers_the_coefficients_and_extrapolates(tmp_path):
    coefficients = fit_phase("layers", _layers_table())
    assert coefficients["layers"] == pytest.approx(9.75)
    assert coefficients["layers*kv_len"] == pytest.approx(1e-3)
    assert coefficients["layers*query_tokens"] == pytest.approx(0.25)
    assert coefficients["1"] == pytest.approx(0.0, abs=1e-9)
    latency = _measured(tmp_path, kind="fitted")
    assert latency.layers_ns(16, 1, 10_000) == 16 * 20_000  # beyond the grid: the fit extrapolates
    given = _measured(tmp_path, kind="fitted", fit={"layers": {"1": 1.0, "layers": 2.0}})
    assert given.layers_ns(100, 1, 0) == 201_000
    with pytest.raises(ProfileError, match="profile.fit.layers"):
        _measured(tmp_path, kind="fitted", fit={"layers": {"bogus": 1.0}})


@pytest.mark.parametrize("kind", ["measured", "fitted"])
def test_calibrated_cycle_phases_and_their_defaults(tmp_path, kind):
    """colocated_contention is stored as 1000·c µs and read as parts per million; verify_fixed as a time.
    Without them the drafter and stage 0 run back to back (c = 1) and verification costs nothing extra."""
    assert _measured(tmp_path, kind).colocated_contention_ppm(2) == 1_000_000
    assert _measured(tmp_path, kind).verify_fixed_ns(2) == 0
    phases = {
        "layers": _layers_table(),
        "colocated_contention": [_entry(300.0, num_stages=2), _entry(500.0, num_stages=4)],
        "verify_fixed": [_entry(400.0, num_stages=2), _entry(600.0, num_stages=4)],
    }
    spec = LatencySpec(kind=kind, profile_path=_profile(tmp_path, phases))
    latency = build_latency_model(Scenario(model=TOY_SHAPE, latency=spec))
    assert latency.colocated_contention_ppm(2) == 300_000
    assert latency.colocated_contention_ppm(3) == 400_000
    assert latency.verify_fixed_ns(3) == 500_000


def test_stream_overlap_is_read_in_parts_per_million_held_at_the_measured_stream_counts(tmp_path):
    """stream_overlap stores 1000·c; between measured g it interpolates, outside it takes the nearest, one
    stream never overlaps, and a bundle without the phase keeps members back to back (c = 1)."""
    assert _measured(tmp_path).stream_overlap_ppm(5) == 1_000_000
    phases = {
        "layers": _layers_table(),
        # the raw times beside the factor are informational
        "stream_overlap": [
            _entry(1000.0 * c, streams=g, kv_len=64, concurrent_us=1.0)
            for g, c in ((2, 0.2), (3, 0.4), (5, 0.6))
        ],
    }
    spec = LatencySpec(kind="measured", profile_path=_profile(tmp_path, phases))
    latency = build_latency_model(Scenario(model=TOY_SHAPE, latency=spec))
    assert [latency.stream_overlap_ppm(g) for g in (1, 2, 3, 4, 5, 9)] == [
        1_000_000,
        200_000,
        400_000,
        500_000,
        600_000,
        600_000,
    ]
    fitted = build_latency_model(
        Scenario(model=TOY_SHAPE, latency=LatencySpec(kind="fitted", profile_path=spec.profile_path))
    )
    assert 0 <= fitted.stream_overlap_ppm(40) <= 1_000_000  # a fit may run off [0, 1]: clamped


# --- tensor parallelism from measured shards and all-reduces ---------------------------------------------------
RING = {"ring_steps": 6.0, "ring_bytes": 0.002}  # µs per ring step, µs per byte moved


def _ring_us(tp, nbytes):
    return RING["ring_steps"] * (tp - 1) + RING["ring_bytes"] * 2 * (tp - 1) / tp * nbytes


def _tp_measured(tmp_path, with_fit=True, kind="measured"):
    hidden = TOY_SHAPE.hidden_size * TOY_SHAPE.dtype_bytes  # bytes of one token's hidden state
    phases = {
        "layers": _layers_table(),
        "embed": [_entry(3.0, query_tokens=1), _entry(5.0, query_tokens=8)],
        "head": [_entry(40.0, query_tokens=1), _entry(48.0, query_tokens=9)],
        # one shard: 10 µs per layer over d, +1 µs per 1k positions over d
        "layers_tp": [
            _entry(layers * (10 + kv / 1_000) / d, tp_degree=d, layers=layers, query_tokens=1, kv_len=kv)
            for d in (1, 2, 4)
            for layers in (1, 32)
            for kv in (0, 4_000)
        ],
        "allreduce": [_entry(_ring_us(2, q * hidden), tp_degree=2, bytes=q * hidden) for q in (1, 4, 16)],
    }
    path = _profile(tmp_path, phases)
    if with_fit:
        data = json.loads(Path(path).read_text())
        data["allreduce_fit"] = {"coefficients": RING, "degrees": [2], "rule": "test"}
        Path(path).write_text(json.dumps(data))
    spec = LatencySpec(kind=kind, profile_path=path)
    return build_latency_model(Scenario(model=TOY_SHAPE, latency=spec))


@pytest.mark.parametrize("tp", [2, 4])
def test_measured_tp_step_is_embed_shards_two_allreduces_per_layer_and_head(tmp_path, tp):
    latency = _tp_measured(tmp_path)
    hidden_bytes = TOY_SHAPE.hidden_size * TOY_SHAPE.dtype_bytes
    layers = TOY_SHAPE.num_layers
    for kv in (0, 1_000, 4_000):
        shard_us = layers * (10 + kv / 1_000) / tp
        # tp = 2 reads the allreduce table, tp = 4 (not measured) the ring fit: the same closed form here
        expected_us = 3.0 + shard_us + 2 * layers * _ring_us(tp, hidden_bytes) + 40.0
        assert latency.target_ns(1, kv, tp) == pytest.approx(expected_us * 1e3, abs=2 * layers + 2)
    arrays = latency.target_ns(1, np.array([0, 4_000]), tp)
    assert arrays.tolist() == [latency.target_ns(1, 0, tp), latency.target_ns(1, 4_000, tp)]


def test_tp_one_is_the_single_gpu_table(tmp_path):
    (tmp_path / "tp").mkdir()
    plain, with_tp = _measured(tmp_path), _tp_measured(tmp_path / "tp")
    for layers, kv in ((2, 0), (4, 2_500), (8, 4_000)):
        assert (
            with_tp.layers_ns(layers, 1, kv, tp=1)
            == plain.layers_ns(layers, 1, kv)
            == plain.layers_ns(layers, 1, kv, 1)
        )
    assert with_tp.allreduce_ns(4096, 1) == 0


def test_unmeasured_degree_without_a_ring_fit_is_refused(tmp_path):
    latency = _tp_measured(tmp_path, with_fit=False)
    assert latency.target_ns(1, 0, 2) > 0  # the measured degree needs no fit
    with pytest.raises(ProfileError, match=r"tp_degree=4 not measured \(measured: 2\).*allreduce_fit"):
        latency.target_ns(1, 0, 4)
    with pytest.raises(ProfileError, match=r"layers_tp: tp_degree=8 outside the measured range"):
        _tp_measured(tmp_path).layers_ns(32, 1, 0, tp=8)


def test_fitted_kind_prices_tp_with_the_ring_fit(tmp_path):
    latency = _tp_measured(tmp_path, kind="fitted")
    hidden_bytes = TOY_SHAPE.hidden_size * TOY_SHAPE.dtype_bytes
    assert latency.allreduce_ns(hidden_bytes, 8) == round(_ring_us(8, hidden_bytes) * 1e3)
    # the shard fit (terms over tp_degree) extrapolates in kv_len and degree: 32 layers, 8k positions, d = 8
    shard_ns = latency.layers_ns(32, 1, 8_000, tp=8) - 2 * 32 * latency.allreduce_ns(hidden_bytes, 8)
    assert shard_ns == pytest.approx(32 * (10 + 8) / 8 * 1e3, abs=2)


@pytest.mark.parametrize("kind", ["measured", "fitted"])
def test_one_gpu_ar_step_is_the_measured_whole_step_where_the_profile_has_it(tmp_path, kind):
    """The whole AR step (one graph, embed..argmax) replaces the sum of separately timed phases for one query
    token on one GPU; verify passes (several query tokens) keep the sum, and without ``ar_step`` the sum is all
    there is."""
    layers = TOY_SHAPE.num_layers
    phases = {
        "layers": [
            _entry(n * (10 + kv / 1_000), layers=n, query_tokens=q, kv_len=kv)
            for n in (1, layers)
            for q in (1, 4)
            for kv in (0, 4_000)
        ],
        "embed": [_entry(3.0, query_tokens=1), _entry(5.0, query_tokens=5)],
        "head": [_entry(40.0, query_tokens=1), _entry(48.0, query_tokens=5)],
    }
    spec = LatencySpec(kind=kind, profile_path=_profile(tmp_path, phases))
    plain = build_latency_model(Scenario(model=TOY_SHAPE, latency=spec))
    assert plain.target_ns(1, 1_000) == pytest.approx((3 + layers * 11 + 40) * 1e3, abs=2)
    phases["ar_step"] = [_entry(500.0, kv_len=0), _entry(540.0, kv_len=4_000)]  # 10 µs per 1k positions
    spec = LatencySpec(kind=kind, profile_path=_profile(tmp_path, phases))
    latency = build_latency_model(Scenario(model=TOY_SHAPE, latency=spec))
    assert latency.target_ns(1, 1_000) == pytest.approx(510_000, abs=2)
    assert latency.target_ns(1, np.array([0, 2_000])).tolist() == pytest.approx([500_000, 520_000], abs=2)
    assert latency.target_ns(4, 1_000) == plain.target_ns(4, 1_000)


def test_fitted_serial_costs_hold_the_nearest_fitted_stage_count(tmp_path):
    phases = {
        "layers": _layers_table(),
        "cycle_fixed": [_entry(30.0, num_stages=1), _entry(50.0, num_stages=2)],
        "verify_fixed": [_entry(7.0, num_stages=2)],
        "colocated_contention": [_entry(400.0, num_stages=2)],
    }
    spec = LatencySpec(kind="measured", profile_path=_profile(tmp_path, phases))
    latency = build_latency_model(Scenario(model=TOY_SHAPE, latency=spec))
    assert [latency.cycle_fixed_ns(n) for n in (1, 2, 4, 8)] == [30_000, 50_000, 50_000, 50_000]
    assert latency.verify_fixed_ns(1) == latency.verify_fixed_ns(8) == 7_000
    assert latency.colocated_contention_ppm(4) == 400_000
    with pytest.raises(ProfileError, match="layers=16 outside"):  # measured phases still refuse
        latency.layers_ns(16, 1, 0)


def test_every_profile_phase_has_fit_terms_and_every_shipped_bundle_builds_fitted():
    """A phase without fit terms made `latency.kind = fitted` crash on any bundle holding it (host_issue in the
    shipped qwen3.5-4b_h100 bundle: KeyError)."""
    from spdsim.contract.profile_schema import PHASE_COORDINATES
    from spdsim.latency.profiled import FIT_TERMS

    assert set(PHASE_COORDINATES) <= set(FIT_TERMS)
    shipped = sorted((Path(__file__).parents[1] / "spdsim" / "profiles" / "measured").glob("*.json"))
    assert shipped
    for path in shipped:
        latency = build_latency_model(
            Scenario(model=TOY_SHAPE, latency=LatencySpec(kind="fitted", profile_path=str(path)))
        )
        assert latency.layers_ns(1, 1, np.array([128]), 1)[0] > 0
