"""Design search for SPD: the best (n, L_s, stage split, drafter placement) for one hardware/model/acceptance.

Every candidate is priced by the closed form (``spdsim.engine.closed_form.predict``, milliseconds each) to prune the space;
the finalists are then simulated with the discrete-event engine (jitter and sampled acceptance included) and
ranked by simulated tokens/s. Margins are relative to the winner, so a near-tie reads as one.

Stage splits: ``even`` (L/n layers each, only when n divides L) and ``balanced`` (uneven: the min-max split of
what each stage member costs in the cycle model, i.e. embedding and a co-located drafter on stage 0; the
verify runs serially on the controller, so no stage carries lm_head + verify in this model).

Acceptance across designs: ``fixed`` keeps the scenario's acceptance for every design; ``fit`` fits
α = a + b·log2(n) + c·L_s to the embedded SPD presets of the same model, dataset and temperature
(``<model>/<dataset>/spd-n<n>-l<L_s>[-t1]``, docs/spd.md §5.3), so deeper drafters and shallower pipelines
get the acceptance the published numbers imply.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from spdsim.errors import SpdsimError
from spdsim.latency.build import build_latency_model
from spdsim.latency.model import LatencyModel
from spdsim.methods.pipeline import colocated_stage0_ns
from spdsim.scenario.config import DRAFTER_PLACEMENTS, AcceptanceSpec, Scenario
from spdsim.scenario.memory import fits

SPLITS = ("even", "balanced")
ALPHA_MODELS = ("fixed", "fit")
_SPD_PRESET = re.compile(r"^(?P<prefix>[^/]+/[^/]+)/spd-n(?P<n>\d+)-l(?P<ls>\d+)(?P<suffix>(-t1)?)$")


@dataclass(frozen=True)
class Design:
    """One SPD configuration; ``stage_layers`` is empty for the even split."""

    num_stages: int
    spec_layers: int
    split: str
    drafter_placement: str
    stage_layers: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        layers = "even" if not self.stage_layers else "/".join(map(str, self.stage_layers))
        return f"n{self.num_stages} L_s{self.spec_layers} {layers} {self.drafter_placement}"


@dataclass(frozen=True)
class SearchSpace:
    stages: tuple[int, ...] = tuple(range(2, 17))
    spec_layers: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    placements: tuple[str, ...] = DRAFTER_PLACEMENTS
    splits: tuple[str, ...] = SPLITS
    max_gpus: int = 0  # 0: no limit


@dataclass(frozen=True)
class AlphaFit:
    """α(n, L_s) = intercept + per_doubling·log2(n) + per_spec_layer·L_s, clipped to [0, 1]."""

    intercept: float
    per_doubling: float
    per_spec_layer: float
    source: str  # the presets it was fitted to

    def alpha(self, num_stages: int, spec_layers: int) -> float:
        value = self.intercept + self.per_doubling * math.log2(num_stages) + self.per_spec_layer * spec_layers
        return min(1.0, max(0.0, value))


@dataclass(frozen=True)
class Candidate:
    """A design with its closed form and (finalists only) its simulated figures."""

    design: Design
    gpus: int
    alpha: float
    closed_form_tokens_per_s: float
    closed_form_speedup: float
    cycle_us: float
    simulated_tokens_per_s: float | None = None
    simulated_speedup: float | None = None

    def row(self) -> dict[str, Any]:
        d = self.design
        return {
            "design": d.label,
            "num_stages": d.num_stages,
            "spec_layers": d.spec_layers,
            "split": d.split,
            "stage_layers": "/".join(map(str, d.stage_layers)) if d.stage_layers else "",
            "drafter_placement": d.drafter_placement,
            "gpus": self.gpus,
            "alpha": self.alpha,
            "cycle_us": self.cycle_us,
            "closed_form_tokens_per_s": self.closed_form_tokens_per_s,
            "closed_form_speedup": self.closed_form_speedup,
            "simulated_tokens_per_s": self.simulated_tokens_per_s,
            "simulated_speedup": self.simulated_speedup,
        }


@dataclass(frozen=True)
class SearchResult:
    candidates: tuple[Candidate, ...]  # every design, by closed-form tokens/s (best first)
    finalists: tuple[Candidate, ...]  # simulated, by simulated tokens/s (best first)
    reference: Candidate | None  # the reference design, simulated (None when not given)
    ar_tokens_per_s: float  # simulated AR on one GPU, same setting
    alpha_fit: AlphaFit | None

    @property
    def best(self) -> Candidate:
        return self.finalists[0]

    def finalist_rows(self) -> list[dict[str, Any]]:
        """Finalists with rank and margin below the winner (fraction of its simulated tokens/s)."""
        best = self.best.simulated_tokens_per_s
        rows = []
        for rank, candidate in enumerate(self.finalists, start=1):
            row = {"rank": rank, **candidate.row()}
            row["margin"] = 1.0 - candidate.simulated_tokens_per_s / best  # type: ignore[operator]
            rows.append(row)
        return rows

    def candidate_rows(self) -> list[dict[str, Any]]:
        return [{"closed_form_rank": i, **c.row()} for i, c in enumerate(self.candidates, start=1)]


# ------------------------------------------------------------------------------------------------ splits


def stage_member_ns(
    scenario: Scenario, latency: LatencyModel, design: Design, stage: int, layers: int
) -> float:
    """What stage ``stage`` holding ``layers`` layers adds to a saturated cycle (mid-request KV length).

    The hidden-state send is left out: every stage pays the same one. Stage 0 is priced as the schedule prices it
    (``spdsim.methods.pipeline.colocated_stage0_ns``: the embedding, and a co-located drafter with the calibrated
    contention).
    """
    kv = scenario.workload.prompt_tokens + scenario.workload.new_tokens // 2
    cost = float(latency.layers_ns(layers, 1, kv))
    if stage > 0:
        return cost
    forward0 = np.asarray([latency.layers_ns(layers, 1, kv)], dtype=np.int64) + latency.embed_ns(1)
    if design.drafter_placement != "stage0":
        return float(forward0[0])
    draft = np.asarray([latency.pdm_ns(design.spec_layers, design.num_stages + 1, kv)], dtype=np.int64)
    slowed0, added = colocated_stage0_ns(
        latency, scenario.overheads, forward0, draft, design.num_stages, spd=True
    )
    return float(slowed0[0] + added[0]) + scenario.overheads.gather_ns


def balanced_split(scenario: Scenario, latency: LatencyModel, design: Design) -> tuple[int, ...]:
    """Layer counts minimising the slowest stage member (greedy: each layer goes where it costs least).

    Stage costs grow with their layer count, so adding each layer to the stage whose cost after the addition is
    smallest reaches the min-max optimum: it only exceeds the optimum T* when every stage already holds the most
    layers it can hold under T*, which would make the layers sum past L.
    """
    n = design.num_stages
    most = latency.num_layers - n + 1
    inner = [stage_member_ns(scenario, latency, design, 1, layers) for layers in range(most + 1)]
    first = [stage_member_ns(scenario, latency, design, 0, layers) for layers in range(most + 1)]
    counts = [1] * n
    for _ in range(latency.num_layers - n):
        stage = min(range(n), key=lambda s: ((first if s == 0 else inner)[counts[s] + 1], s))
        counts[stage] += 1
    return tuple(counts)


# --------------------------------------------------------------------------------------------- acceptance


def fit_alpha(preset_name: str, presets: dict | None = None) -> AlphaFit:
    """Least-squares α(n, L_s) over the SPD presets sharing ``preset_name``'s model, dataset and temperature."""
    from spdsim.scenario.presets import load_presets

    presets = load_presets() if presets is None else presets
    match = _SPD_PRESET.match(preset_name)
    if match is None:
        raise SpdsimError(
            f"--alpha-model fit: preset '{preset_name}' is not an SPD preset '<model>/<dataset>/spd-n<n>-l<L_s>'"
        )
    family = []
    for name, preset in presets.items():
        other = _SPD_PRESET.match(name)
        if other and other["prefix"] == match["prefix"] and other["suffix"] == match["suffix"]:
            family.append((int(other["n"]), int(other["ls"]), float(preset.acceptance["alpha"]), name))
    if len({(n, ls) for n, ls, _, _ in family}) < 3:
        raise SpdsimError(
            f"--alpha-model fit: fewer than 3 SPD presets like '{preset_name}'; use --alpha-model fixed"
        )
    family.sort()
    design = np.array([[1.0, math.log2(n), ls] for n, ls, _, _ in family])
    target = np.array([alpha for _, _, alpha, _ in family])
    (intercept, per_doubling, per_spec_layer), *_ = np.linalg.lstsq(design, target, rcond=None)
    return AlphaFit(
        float(intercept), float(per_doubling), float(per_spec_layer), ", ".join(n for *_, n in family)
    )


# ------------------------------------------------------------------------------------------------- search


def enumerate_designs(base: Scenario, space: SearchSpace) -> list[Design]:
    """Every design in ``space`` that fits the model, the GPU budget and each GPU's memory (duplicates of even
    splits dropped)."""
    from spdsim.methods.pipeline import spd_gpus

    latency = build_latency_model(base)
    num_layers = latency.num_layers
    designs = []
    for n in space.stages:
        if n < 1 or n > num_layers:
            continue
        for spec_layers in space.spec_layers:
            for placement in space.placements:
                probe = Design(n, spec_layers, "even", placement)
                gpus = spd_gpus(design_scenario(base, probe))
                if space.max_gpus and gpus > space.max_gpus:
                    continue
                even = (num_layers // n,) * n if num_layers % n == 0 else None
                if "even" in space.splits and even is not None and fits(design_scenario(base, probe)):
                    designs.append(probe)
                if "balanced" in space.splits:
                    counts = balanced_split(base, latency, replace(probe, split="balanced"))
                    balanced = Design(n, spec_layers, "balanced", placement, counts)
                    if counts != even and fits(design_scenario(base, balanced)):
                        designs.append(balanced)
    return designs


def design_scenario(base: Scenario, design: Design, alpha_fit: AlphaFit | None = None) -> Scenario:
    """``base`` running SPD with ``design`` (and the fitted α, when given)."""
    method = replace(
        base.method,
        name="spd",
        num_stages=design.num_stages,
        spec_layers=design.spec_layers,
        stage_layers=design.stage_layers,
        drafter_placement=design.drafter_placement,
    )
    scenario = replace(base, method=method)
    if alpha_fit is not None:
        alpha = alpha_fit.alpha(design.num_stages, design.spec_layers)
        acceptance = AcceptanceSpec(
            kind="iid", alpha=alpha, alpha_saturated=alpha, alpha_refill=alpha, preset=base.acceptance.preset
        )
        scenario = replace(scenario, acceptance=acceptance)
    return scenario


def _alpha_of(scenario: Scenario) -> float:
    return scenario.acceptance.alpha


def closed_form_candidate(base: Scenario, design: Design, alpha_fit: AlphaFit | None) -> Candidate:
    from spdsim.engine.closed_form import predict

    scenario = design_scenario(base, design, alpha_fit)
    prediction = predict(scenario)
    return Candidate(
        design=design,
        gpus=prediction.gpus,
        alpha=_alpha_of(scenario),
        closed_form_tokens_per_s=float(prediction.tokens_per_s),
        closed_form_speedup=float(prediction.speedup),  # type: ignore[arg-type]
        cycle_us=float(prediction.iteration_ns) / 1e3,
    )


def search(
    base: Scenario,
    space: SearchSpace = SearchSpace(),
    *,
    alpha_model: str = "fixed",
    finalists: int = 10,
    reference: Design | None = None,
    workers: int = 1,
) -> SearchResult:
    """Prune by closed form, rank the ``finalists`` best by simulation; the reference design is always simulated."""
    from spdsim.drivers.sweep import simulate_many
    from spdsim.report.compare import baseline_scenario

    if alpha_model not in ALPHA_MODELS:
        raise SpdsimError(f"--alpha-model: unknown '{alpha_model}' (allowed: {', '.join(ALPHA_MODELS)})")
    if finalists < 1:
        raise SpdsimError(f"--finalists: must be >= 1 (got {finalists})")
    alpha_fit = fit_alpha(base.acceptance.preset) if alpha_model == "fit" else None
    designs = enumerate_designs(base, space)
    if not designs:
        raise SpdsimError("optimize: no design fits the search space and the GPU budget (--max-gpus)")
    candidates = sorted(
        (closed_form_candidate(base, d, alpha_fit) for d in designs),
        key=lambda c: (-c.closed_form_tokens_per_s, c.gpus, c.design.label),
    )
    chosen = list(candidates[:finalists])
    reference_candidate = None
    if reference is not None:
        if reference.split == "balanced" and not reference.stage_layers:
            latency = build_latency_model(base)
            reference = replace(reference, stage_layers=balanced_split(base, latency, reference))
        reference_candidate = closed_form_candidate(base, reference, alpha_fit)
    to_simulate = [*chosen, *([reference_candidate] if reference_candidate else [])]
    scenarios = [baseline_scenario(base)] + [design_scenario(base, c.design, alpha_fit) for c in to_simulate]
    rows = simulate_many(scenarios, workers=workers)
    ar_tokens_per_s = rows[0]["tokens_per_s"]
    simulated = [
        replace(
            c,
            simulated_tokens_per_s=row["tokens_per_s"],
            simulated_speedup=row["tokens_per_s"] / ar_tokens_per_s,
        )
        for c, row in zip(to_simulate, rows[1:], strict=True)
    ]
    if reference_candidate is not None:
        reference_candidate = simulated.pop()
    ranked = sorted(simulated, key=lambda c: (-c.simulated_tokens_per_s, c.gpus, c.design.label))  # type: ignore[operator]
    return SearchResult(tuple(candidates), tuple(ranked), reference_candidate, ar_tokens_per_s, alpha_fit)


# ---------------------------------------------------------------------------------------------- boundary


def parse_int_range(text: str, option: str) -> tuple[int, ...]:
    """``2:16`` (inclusive) or ``2,4,8`` -> a tuple of ints; one-line error otherwise."""
    try:
        if ":" in text:
            low, high = (int(part) for part in text.split(":"))
            values = tuple(range(low, high + 1))
        else:
            values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise SpdsimError(f"{option}: expected LOW:HIGH or a comma list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise SpdsimError(f"{option}: expected integers >= 1, got {text!r}")
    return values


def reference_design(base: Scenario) -> Design:
    """The SPD authors' design (n = 8, L_s = 3, drafter on its own GPU): the even split where 8 divides the
    model's layers, else the balanced one (``search`` computes its layer counts)."""
    layers = base.model.num_layers if base.model is not None else 0
    split = "even" if layers and layers % 8 == 0 else "balanced"
    return Design(8, 3, split, "own-gpu")


def load_base_scenario(
    path: str | None, overrides: tuple[str, ...] | list[str], acceptance: str | None
) -> Scenario:
    """The first SPD run of a scenario file (default: the embedded default), with preset and overrides."""
    from spdsim.scenario.files import default_scenario_path, load_runs

    # every design sets n, L_s, the split and the placement itself: the base's own n need not fit the model
    # (the default n = 8 does not divide Qwen3-8B's 36 layers); the user's --set of them still wins
    own = [o for o in overrides if o.split("=", 1)[0].strip() in ("method.num_stages", "method.stage_layers")]
    neutral = [] if own else ["method.num_stages=1", "method.stage_layers=[]"]
    runs = load_runs([path or default_scenario_path()], [*neutral, *overrides], acceptance, methods=("spd",))
    return runs[0].scenario


def render_result(result: SearchResult, top: int):
    """A rich Table of the simulated finalists (rank, design, GPUs, α, speedups, margin) plus the reference."""
    from rich.table import Table

    table = Table(header_style="bold")
    for header in (
        "rank",
        "n",
        "L_s",
        "split",
        "drafter",
        "GPUs",
        "alpha",
        "cycle us",
        "closed form",
        "simulated",
        "tokens/s",
        "margin",
    ):
        table.add_column(header, justify="left" if header in ("split", "drafter") else "right", no_wrap=True)
    rows = result.finalist_rows()[:top]
    if result.reference is not None:
        best = result.best.simulated_tokens_per_s
        reference = {"rank": "ref", **result.reference.row()}
        reference["margin"] = 1.0 - result.reference.simulated_tokens_per_s / best  # type: ignore[operator]
        rows.append(reference)
    for row in rows:
        table.add_row(
            str(row["rank"]),
            str(row["num_stages"]),
            str(row["spec_layers"]),
            row["stage_layers"] or "even",
            row["drafter_placement"],
            str(row["gpus"]),
            f"{row['alpha']:.3f}",
            f"{row['cycle_us']:.0f}",
            f"{row['closed_form_speedup']:.2f}x",
            f"{row['simulated_speedup']:.2f}x",
            f"{row['simulated_tokens_per_s']:,.1f}",
            f"{row['margin']:.1%}",
        )
    return table
