"""Acceptance models: which drafts the target accepts (docs/design.md §5).

* ``iid``        — every draft accepted with probability α (chains: r_k = α^k);
* ``positional`` — unconditional per-position rates r_k (vLLM convention, non-increasing); the conditional
  acceptance of draft k is a_k = r_k / r_{k-1}. Beyond the given positions a_k stays at its last value. SPD
  (one draft per verification) uses r_1;
* ``spd-state``  — SPD: the first verification after a fill/refill uses α_refill, the others α_saturated
  (chains use α_saturated);
* ``trace``      — replay of an executor trace (CSV/Parquet, format in the team brief): chains replay each
  verification's accepted count, SPD/PPSD the accept/reject sequence. Request r replays prompt r mod P, its
  verifications in order (wrapping around if the simulation asks for more).

Presets (kind ``preset``) are resolved to one of the kinds above by the scenario loader before simulation.
A model is immutable; each request draws from its own ``AcceptanceStream`` (seeded from the scenario).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spdsim.contract.extras import is_parquet, require_parquet
from spdsim.contract.trace import TRACE_COLUMNS, TRACE_STATES
from spdsim.errors import SpdsimError
from spdsim.scenario.config import AcceptanceSpec

_CHUNK = 4096


@dataclass(frozen=True)
class Trace:
    """Replayable outcomes per prompt: SPD accept flags (0/1) or chain accepted counts, in verify order."""

    kind: str  # "spd" | "chain"
    prompt_ids: tuple[str, ...]
    outcomes: tuple[tuple[int, ...], ...]  # per prompt, one entry per verification

    @property
    def accepted_total(self) -> int:
        return sum(sum(per_prompt) for per_prompt in self.outcomes)


@dataclass(frozen=True)
class AcceptanceModel:
    """An immutable acceptance model; ``stream`` gives a request its own random (or replayed) outcomes."""

    kind: str
    alpha: float  # iid α; positional: r_1
    rates: tuple[float, ...]  # unconditional r_k as given (positional), else ()
    alpha_saturated: float
    alpha_refill: float
    trace: Trace | None = None

    def conditional(self, k: int) -> float:
        """True conditional acceptance a_k of chain draft k (1-based), given drafts 1..k-1 were accepted."""
        if self.kind == "positional":
            rates = self.rates
            if k <= len(rates):
                previous = rates[k - 2] if k >= 2 else 1.0
                return min(rates[k - 1] / previous, 1.0) if previous > 0 else 0.0
            return self.conditional(len(rates))
        if self.kind == "spd-state":
            return self.alpha_saturated
        return self.alpha

    def survival(self, k_max: int) -> np.ndarray:
        """r_1..r_{k_max}: probability that the first k chain drafts are all accepted."""
        conditional = np.array([self.conditional(k) for k in range(1, k_max + 1)], dtype=np.float64)
        return np.cumprod(conditional)

    def spd_alphas(self) -> tuple[float, float]:
        """(α_saturated, α_refill) of a one-draft-per-verification pipeline."""
        if self.kind == "spd-state":
            return self.alpha_saturated, self.alpha_refill
        return self.alpha, self.alpha

    def stream(self, rng: np.random.Generator, request: int, k_max: int = 1) -> AcceptanceStream:
        """Outcomes for one request; ``k_max`` bounds the chain length the caller will ask for."""
        if self.trace is not None:
            index = request % len(self.trace.outcomes)
            return TraceStream(self.trace.outcomes[index])
        return RandomStream(rng, self, k_max)


class AcceptanceStream:
    """Per-request source of outcomes (mutable; one per request)."""

    def chain_accepted(self, drafted: int) -> int:
        """Accepted drafts (leading run) of a chain of ``drafted`` drafts."""
        raise NotImplementedError

    def spd_accept(self, refill: bool) -> bool:
        """Outcome of one SPD/PPSD verification; ``refill``: the first one after a fill/refill."""
        raise NotImplementedError


class RandomStream(AcceptanceStream):
    """Inverse-CDF sampling: one uniform per verification (chains: accepted = #{k <= K : u < r_k})."""

    def __init__(self, rng: np.random.Generator, model: AcceptanceModel, k_max: int):
        self._rng = rng
        self._uniforms: list[float] = []
        self._next = 0
        self._neg_survival = [-r for r in model.survival(max(k_max, 1)).tolist()]
        self._alpha_saturated, self._alpha_refill = model.spd_alphas()

    def _uniform(self) -> float:
        if self._next == len(self._uniforms):
            self._uniforms = self._rng.random(_CHUNK).tolist()
            self._next = 0
        value = self._uniforms[self._next]
        self._next += 1
        return value

    def chain_accepted(self, drafted: int) -> int:
        accepted = bisect_left(self._neg_survival, -self._uniform())
        return accepted if accepted < drafted else drafted

    def spd_accept(self, refill: bool) -> bool:
        return self._uniform() < (self._alpha_refill if refill else self._alpha_saturated)


class TraceStream(AcceptanceStream):
    def __init__(self, outcomes: tuple[int, ...]):
        self._outcomes = outcomes
        self._next = 0

    def _take(self) -> int:
        value = self._outcomes[self._next % len(self._outcomes)]
        self._next += 1
        return value

    def chain_accepted(self, drafted: int) -> int:
        return min(self._take(), drafted)

    def spd_accept(self, refill: bool) -> bool:
        return bool(self._take())


def build_acceptance_model(spec: AcceptanceSpec) -> AcceptanceModel:
    """The model a scenario's AcceptanceSpec describes (presets must be resolved by the loader first)."""
    kind = spec.kind
    if kind == "iid":
        return AcceptanceModel("iid", spec.alpha, (), spec.alpha, spec.alpha)
    if kind == "positional":
        if not spec.rates:
            raise SpdsimError("acceptance.rates: kind 'positional' needs at least one rate r_1")
        rates = tuple(float(r) for r in spec.rates)
        return AcceptanceModel("positional", rates[0], rates, rates[0], rates[0])
    if kind == "spd-state":
        return AcceptanceModel("spd-state", spec.alpha_saturated, (), spec.alpha_saturated, spec.alpha_refill)
    if kind == "trace":
        trace = load_trace(spec.trace_path)
        return AcceptanceModel("trace", spec.alpha, (), spec.alpha, spec.alpha, trace)
    if kind == "preset":
        raise SpdsimError(
            f"acceptance.preset '{spec.preset}': resolve presets with the scenario loader first"
        )
    raise SpdsimError(
        f"acceptance.kind: unknown '{kind}' (allowed: iid, positional, spd-state, trace, preset)"
    )


def load_trace(path: str | Path) -> Trace:
    """Read an executor acceptance trace (CSV or Parquet); a malformed file raises a one-line SpdsimError."""
    import pandas as pd  # deferred: only trace replay needs pandas

    path = Path(path)
    if not path.is_file():
        raise SpdsimError(f"trace: no such file '{path}'")
    parquet = is_parquet(path)
    if parquet:
        require_parquet("Parquet input")
    try:
        frame = pd.read_parquet(path) if parquet else pd.read_csv(path)
    except Exception as exc:  # any reader failure is a user file problem
        raise SpdsimError(f"trace '{path}': cannot read ({type(exc).__name__}: {exc})") from None
    for column in TRACE_COLUMNS:
        if column not in frame.columns:
            raise SpdsimError(
                f"trace '{path}': missing column '{column}' (required: {', '.join(TRACE_COLUMNS)})"
            )
    if frame.empty:
        raise SpdsimError(f"trace '{path}': no rows")
    for column in ("verify_index", "draft_index", "accepted", "width"):
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any() or (values != values.round()).any():
            raise SpdsimError(f"trace '{path}': column '{column}' must hold integers")
        frame[column] = values.astype(np.int64)
    if not frame["accepted"].isin((0, 1)).all():
        raise SpdsimError(f"trace '{path}': column 'accepted' must be 0 or 1")
    states = set(frame["state"].astype(str))
    if not states <= set(TRACE_STATES):
        raise SpdsimError(
            f"trace '{path}': column 'state' has {sorted(states - set(TRACE_STATES))} "
            f"(allowed: {', '.join(TRACE_STATES)})"
        )
    if "chain" in states and len(states) > 1:
        raise SpdsimError(f"trace '{path}': column 'state' mixes 'chain' with SPD states")
    kind = "chain" if states == {"chain"} else "spd"
    frame["prompt_id"] = frame["prompt_id"].astype(str)
    prompt_ids = tuple(dict.fromkeys(frame["prompt_id"]))
    outcomes = []
    for prompt_id in prompt_ids:
        rows = frame[frame["prompt_id"] == prompt_id].sort_values(
            ["verify_index", "draft_index"], kind="stable"
        )
        per_verify = []
        for _, group in rows.groupby("verify_index", sort=True):
            flags = group["accepted"].tolist()
            if kind == "spd":
                per_verify.append(int(flags[0]))
            else:
                per_verify.append(_leading_ones(flags))
        outcomes.append(tuple(per_verify))
    return Trace(kind, prompt_ids, tuple(outcomes))


def _leading_ones(flags: list[int]) -> int:
    count = 0
    for flag in flags:
        if not flag:
            break
        count += 1
    return count


def logit(p: float) -> float:
    p = min(max(p, 1e-9), 1.0 - 1e-9)
    return math.log(p / (1.0 - p))
