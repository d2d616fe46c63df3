"""Profile-driven latency models: phase latencies read from an executor profile bundle.

``measured`` interpolates the bundle's per-phase medians linearly and refuses to extrapolate; ``fitted``
prices each phase with a few least-squares (or given) coefficients and extrapolates by design. They share
the profile plumbing (grid and fit tables, the fit terms ``spdsim calibrate`` also uses), which is why they
sit apart from the constant and roofline models in ``spdsim.latency.model``.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np

from spdsim.contract.profile_schema import PHASE_COORDINATES, ProfileError
from spdsim.latency.model import PPM, KvLen, LatencyModel, _to_ns
from spdsim.scenario.config import Hardware, LatencySpec, ModelShape


class MeasuredLatency(LatencyModel):
    """A profile bundle's per-phase medians, interpolated linearly per coordinate; outside the grid: error."""

    def __init__(
        self,
        shape: ModelShape | None,
        hardware: Hardware | None,
        spec: LatencySpec,
        profile: dict,
        draft_vocab_size: int = 0,
    ):
        super().__init__(shape, hardware, spec, draft_vocab_size)
        self._tables: dict[str, Any] = {
            phase: _GridTable(phase, entries) for phase, entries in profile["phases"].items()
        }
        self._allreduce_fit = profile.get("allreduce_fit")

    def _table(self, phase: str) -> _GridTable:
        table = self._tables.get(phase)
        if table is None:
            raise ProfileError(
                f"profile.phases: this scenario needs phase '{phase}', which the profile lacks (it has "
                f"{', '.join(sorted(self._tables))}); measure it (spdsim exec profile) or compare only what it "
                "prices (spdsim compare --method ar ...)"
            )
        return table

    def embed_ns(self, query_tokens: int = 1) -> int:
        return self._table("embed").lookup_ns(query_tokens=query_tokens)

    def layers_ns(self, layers: int, query_tokens: int, kv_len: KvLen, tp: int = 1) -> Any:
        if tp > 1:  # one rank's shards + the two all-reduces of every layer
            shard = self._table("layers_tp").lookup_ns(
                tp_degree=tp, layers=layers, query_tokens=query_tokens, kv_len=kv_len
            )
            return shard + 2 * layers * self.allreduce_ns(self.hidden_bytes(query_tokens), tp)
        return self._table("layers").lookup_ns(layers=layers, query_tokens=query_tokens, kv_len=kv_len)

    def allreduce_ns(self, num_bytes: int, tp: int) -> int:
        """The ``allreduce`` table at a measured degree; else the profile's ring fit (``allreduce_fit``, written
        by ``spdsim calibrate``), and nothing else: no silent extrapolation."""
        if tp <= 1:
            return 0
        table = self._tables.get("allreduce")
        if isinstance(table, _FitTable) or (isinstance(table, _GridTable) and tp in table.axes[0]):
            return table.lookup_ns(tp_degree=tp, bytes=num_bytes)
        if self._allreduce_fit is None:
            measured = "none" if table is None else ", ".join(f"{d:g}" for d in table.axes[0])
            raise ProfileError(
                f"profile.phases.allreduce: tp_degree={tp} not measured (measured: {measured}) and the profile "
                "has no allreduce_fit (spdsim calibrate fits it from the measured degrees)"
            )
        return _FitTable("allreduce", self._allreduce_fit["coefficients"]).lookup_ns(
            tp_degree=tp, bytes=num_bytes
        )

    def head_ns(self, query_tokens: int = 1) -> int:
        return self._table("head").lookup_ns(query_tokens=query_tokens)

    def target_ns(self, query_tokens: int, kv_len: KvLen, tp: int = 1) -> Any:
        """A one-GPU AR step is the profile's whole-step measurement (``ar_step``: embed..argmax in one graph)
        where it has one: the separately timed phases do not add up to it (SmolLM2-135M on an H200: embed +
        30 layers + head = 2.34 ms, the step 2.65 ms, the step inside a run 2.65 ms)."""
        if query_tokens == 1 and tp == 1 and "ar_step" in self._tables:
            return self._tables["ar_step"].lookup_ns(kv_len=kv_len)
        return super().target_ns(query_tokens, kv_len, tp)

    def pdm_ns(self, spec_layers: int, query_tokens: int, kv_len: KvLen) -> Any:
        return self._table("drafter").lookup_ns(
            spec_layers=spec_layers, query_tokens=query_tokens, kv_len=kv_len
        )

    def chain_draft_ns(self, draft_layers: int, kv_len: KvLen, vocab: int | None = None) -> Any:
        return self._table("chain_draft").lookup_ns(draft_layers=draft_layers, kv_len=kv_len)

    def p2p_ns(self, num_bytes: int) -> int:
        if "p2p" not in self._tables:
            return 0 if self.hardware is None else _to_ns(self.hardware.p2p_latency_ns)
        return self._table("p2p").lookup_ns(bytes=num_bytes)

    def cycle_fixed_ns(self, num_stages: int) -> int:
        if "cycle_fixed" not in self._tables:
            return 0
        return self._nearest_ns("cycle_fixed", num_stages)

    def verify_fixed_ns(self, num_stages: int) -> int:
        if "verify_fixed" not in self._tables:
            return 0
        return self._nearest_ns("verify_fixed", num_stages)

    def chain_fixed_ns(self, draft_tokens: int) -> int:
        if "chain_fixed" not in self._tables:
            return 0
        return self._nearest_ns("chain_fixed", draft_tokens)

    def _nearest_ns(self, phase: str, value: int) -> int:
        """A one-coordinate phase held at the nearest stage count (draft length, stream count) outside the
        fitted or measured ones: a held-out n or K is priced with what calibration saw (docs/profile-schema.md),
        and validate shows the error."""
        table = self._table(phase)
        if isinstance(table, _GridTable):
            axis = table.axes[0]
            value = int(min(max(value, axis[0]), axis[-1]))
        (coordinate,) = PHASE_COORDINATES[phase]
        return table.lookup_ns(**{coordinate: value})

    def colocated_contention_ppm(self, num_stages: int) -> int:
        if "colocated_contention" not in self._tables:
            return PPM
        # stored as µs per ms of the shorter member (c·1000); the table's ns are therefore c·10^6
        value = self._nearest_ns("colocated_contention", num_stages)
        return min(max(int(value), 0), PPM)

    def stream_overlap_ppm(self, streams: int) -> int:
        if streams <= 1 or "stream_overlap" not in self._tables:
            return PPM
        # stored as 1000·c in the µs fields, so the table's ns are c·10^6
        return min(max(int(self._nearest_ns("stream_overlap", streams)), 0), PPM)


# Terms of the few-coefficient fit per phase; "a*b" is the product of two coordinates, "1" the intercept.
FIT_TERMS: dict[str, tuple[str, ...]] = {
    "layers": ("1", "layers", "layers*kv_len", "layers*query_tokens"),
    "embed": ("1", "query_tokens"),
    "head": ("1", "query_tokens"),
    "ar_step": ("1", "kv_len"),
    "drafter": ("1", "spec_layers", "spec_layers*kv_len", "query_tokens"),
    "chain_draft": ("1", "draft_layers", "draft_layers*kv_len"),
    "p2p": ("1", "bytes"),
    "cycle_fixed": ("1", "num_stages"),
    "verify_fixed": ("1", "num_stages"),
    "chain_fixed": ("1", "draft_tokens"),
    "colocated_contention": ("1", "num_stages"),
    "stream_overlap": ("1", "streams"),
    "host_issue": ("1", "graphs"),
    "layers_tp": (
        "1",
        "layers",
        "layers/tp_degree",
        "layers*kv_len/tp_degree",
        "layers*query_tokens/tp_degree",
    ),
    "allreduce": ("ring_steps", "ring_bytes"),
}
# Terms that are not coordinate products: the ring all-reduce's latency steps (d - 1) and bytes each GPU moves.
DERIVED_TERMS = {
    "ring_steps": lambda c: np.asarray(c["tp_degree"], dtype=np.float64) - 1.0,
    "ring_bytes": lambda c: (
        2.0 * (c["tp_degree"] - 1.0) / c["tp_degree"] * np.asarray(c["bytes"], np.float64)
    ),
}


class FittedLatency(MeasuredLatency):
    """Linear-in-coefficients fit per phase (µs); coefficients from ``profile["fit"]`` or least squares."""

    def __init__(
        self,
        shape: ModelShape | None,
        hardware: Hardware | None,
        spec: LatencySpec,
        profile: dict,
        draft_vocab_size: int = 0,
    ):
        LatencyModel.__init__(self, shape, hardware, spec, draft_vocab_size)
        self._allreduce_fit = profile.get("allreduce_fit")
        given = dict(profile.get("fit") or {})
        if self._allreduce_fit is not None:  # the ring fit (relative error, >= 0) wins over a plain one
            given["allreduce"] = self._allreduce_fit["coefficients"]
        self._tables = {}
        for phase, entries in profile["phases"].items():
            coefficients = given.get(phase) or fit_phase(phase, entries)
            self._tables[phase] = _FitTable(phase, coefficients)
        for phase, coefficients in given.items():
            if phase not in self._tables:
                self._tables[phase] = _FitTable(phase, coefficients)


def fit_phase(phase: str, entries: list[dict]) -> dict[str, float]:
    """Least-squares coefficients (µs) of FIT_TERMS[phase] over a phase's measured medians."""
    terms = FIT_TERMS[phase]
    design = np.array([[_term_value(term, entry) for term in terms] for entry in entries], dtype=np.float64)
    target = np.array([entry["median_us"] for entry in entries], dtype=np.float64)
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    return {term: float(value) for term, value in zip(terms, solution, strict=True)}


def _term_value(term: str, coords: dict[str, Any]) -> Any:
    if term == "1":
        return 1.0
    if term in DERIVED_TERMS:
        return DERIVED_TERMS[term](coords)
    product, _, divisor = term.partition("/")  # "a*b/c": a product over one coordinate
    value: Any = 1.0
    for name in product.split("*"):
        value = value * np.asarray(coords[name], dtype=np.float64)
    return value / float(coords[divisor]) if divisor else value


class _FitTable:
    def __init__(self, phase: str, coefficients: dict[str, float]):
        unknown = set(coefficients) - set(FIT_TERMS.get(phase, ()))
        if phase not in FIT_TERMS or unknown:
            raise ProfileError(f"profile.fit.{phase}: unknown phase or terms {sorted(unknown)}")
        self.coefficients = coefficients

    def lookup_ns(self, **coords: Any) -> Any:
        total: Any = 0.0
        for term, coefficient in self.coefficients.items():
            total = total + coefficient * _term_value(term, coords)
        return (
            _to_ns(np.maximum(np.asarray(total) * 1e3, 0.0))
            if isinstance(total, np.ndarray)
            else _to_ns(max(float(total) * 1e3, 0.0))
        )


class _GridTable:
    """Medians on the cartesian grid of a phase's coordinates; multilinear interpolation inside it."""

    def __init__(self, phase: str, entries: list[dict]):
        self.phase = phase
        self.coords = PHASE_COORDINATES[phase]
        self.axes = [np.array(sorted({float(e[c]) for e in entries})) for c in self.coords]
        values = np.full([len(axis) for axis in self.axes], np.nan)
        for entry in entries:
            index = tuple(
                int(np.searchsorted(axis, float(entry[c])))
                for axis, c in zip(self.axes, self.coords, strict=True)
            )
            values[index] = entry["median_us"] * 1e3
        if np.isnan(values).any():
            raise ProfileError(
                f"profile.phases.{phase}: entries must cover the full grid of {', '.join(self.coords)}"
            )
        self.values_ns = values

    def lookup_ns(self, **coords: Any) -> Any:
        for name, axis in zip(self.coords, self.axes, strict=True):
            query = np.asarray(coords[name], dtype=np.float64)
            if query.size and (query.min() < axis[0] or query.max() > axis[-1]):
                # kv_len is the run's context: the usual way out of range is a workload longer than the bundle
                # (its shortest is the prompt: a workload shorter than the bundle's first window)
                hint = ""
                if name == "kv_len" and query.max() > axis[-1]:
                    hint = (
                        f"; keep workload.prompt_tokens + workload.new_tokens within {axis[-1]:g} (--set "
                        "workload.new_tokens=...) or measure longer windows (spdsim exec profile --kv-lens)"
                    )
                elif name == "kv_len":
                    hint = (
                        f"; give workload.prompt_tokens >= {axis[0]:g} (--set workload.prompt_tokens=...) or "
                        "measure shorter windows (spdsim exec profile --kv-lens)"
                    )
                raise ProfileError(
                    f"profile.phases.{self.phase}: {name}={_fmt_range(query)} outside the measured range "
                    f"[{axis[0]:g}, {axis[-1]:g}] (no extrapolation){hint}"
                )
        return _to_ns(self._interpolate(self.values_ns, 0, coords))

    def _interpolate(self, values: np.ndarray, depth: int, coords: dict[str, Any]) -> Any:
        axis = self.axes[depth]
        query = coords[self.coords[depth]]
        if depth == len(self.coords) - 1:
            result = np.interp(np.asarray(query, dtype=np.float64), axis, values)
            return result if isinstance(query, np.ndarray) else float(result)
        position = float(query)
        upper = int(np.searchsorted(axis, position, side="left"))
        if upper == 0 or axis[upper] == position:
            return self._interpolate(values[upper], depth + 1, coords)
        weight = (position - axis[upper - 1]) / (axis[upper] - axis[upper - 1])
        low = self._interpolate(values[upper - 1], depth + 1, coords)
        high = self._interpolate(values[upper], depth + 1, coords)
        return low + weight * (high - low)


def _fmt_range(query: np.ndarray) -> str:
    if query.size == 1:
        return f"{float(query.reshape(-1)[0]):g}"
    return f"[{query.min():g}, {query.max():g}]"


def _profile_shape(profile: dict) -> ModelShape:
    """The model shape a profile was measured on (its ``model`` object holds ModelShape fields)."""
    model = profile["model"]
    names = {f.name for f in fields(ModelShape)}
    if not isinstance(model, dict):
        raise ProfileError("profile.model: must be an object of ModelShape fields")
    try:
        return ModelShape(**{key: value for key, value in model.items() if key in names})
    except TypeError:
        raise ProfileError(
            f"profile.model: needs the ModelShape fields ({', '.join(sorted(names))})"
        ) from None
