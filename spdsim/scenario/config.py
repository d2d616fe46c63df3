"""Scenario: everything one simulation needs, as frozen dataclasses passed explicitly.

A Scenario is written verbatim to ``config.json`` of every run directory, so a run can be reproduced from its
directory alone. Times are integer nanoseconds inside the simulator; bandwidths and peaks carry their unit in
the field name.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from spdsim.contract.shape import ModelShape
from spdsim.contract.vocabulary import (
    ACCEPTANCE_KINDS,
    DRAFT_VOCAB_SIZE,
    DRAFTER_PLACEMENTS,
    METHODS,
    PIPELINE_METHODS,
    STAGE_PLACEMENTS,
    VERIFY_PLACEMENTS,
)
from spdsim.errors import SpdsimError

__all__ = [
    "ACCEPTANCE_KINDS",
    "DRAFTER_PLACEMENTS",
    "LATENCY_KINDS",
    "METHODS",
    "PIPELINE_METHODS",
    "STAGE_PLACEMENTS",
    "VERIFY_PLACEMENTS",
    "AcceptanceSpec",
    "Hardware",
    "LatencySpec",
    "MethodSpec",
    "ModelShape",
    "Overheads",
    "Scenario",
    "Workload",
    "from_dict",
    "to_dict",
]


def _unit_interval(value: float, where: str) -> None:
    """The one check of a probability field, run where the field is built (files, CLI and Python alike)."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise SpdsimError(f"{where}: must be in [0, 1] (got {value})")


LATENCY_KINDS = ("constant", "roofline", "measured", "fitted")


@dataclass(frozen=True)
class Hardware:
    """One accelerator plus its links; peaks from datasheets, efficiencies fitted or assumed."""

    name: str
    mem_bandwidth_gbps: float  # memory bandwidth, GB/s (1e9 B/s): datasheet, or as measured (the file says)
    peak_tflops: float  # dense bf16
    bandwidth_efficiency: float = 0.85
    flops_efficiency: float = 0.6
    kernel_overhead_ns: int = 0  # fixed per-layer launch/sync cost not hidden by graphs
    p2p_latency_ns: int = 0
    p2p_bandwidth_gbps: float = 0.0
    allreduce_latency_ns: int = 0
    memory_gib: float = 80.0
    source: str = ""
    # Topology (spdsim/scenario/topology.py): ranks are packed onto nodes of ``gpus_per_node`` GPUs (0: one node holds
    # every rank); a message between nodes pays the inter-node network instead of the intra-node link.
    gpus_per_node: int = 0
    inter_node_latency_ns: int = 0
    inter_node_bandwidth_gbps: float = 0.0
    collective: str = "fanout"  # control broadcast / anchor gather: "fanout" (serial sends) or "tree"
    # Host-overhead regime (spdsim/latency/host.py): eager HF-style execution pays host time per decoder layer (kernel
    # launches + Python; a layer takes max(GPU, host)), per module call and per message; a graph-captured executor
    # pays only the call. All zero: a pure device roofline.
    host_layer_ns: int = 0
    host_call_ns: int = 0
    host_message_ns: int = 0
    crop_ns: int = (
        0  # every stage crops its KV cache / rewinds DeltaNet states after a rejection (in parallel)
    )
    # A measured device-to-device copy bandwidth (GB/s) that replaces mem_bandwidth_gbps (the datasheet figure of
    # the hardware catalogue) in the roofline; 0: none measured.
    copy_bandwidth_gbps: float = 0.0

    @property
    def stream_bandwidth_gbps(self) -> float:
        """The bandwidth weights and caches stream at: the measured copy bandwidth if given, else the datasheet's."""
        return self.copy_bandwidth_gbps if self.copy_bandwidth_gbps > 0 else self.mem_bandwidth_gbps


@dataclass(frozen=True)
class LatencySpec:
    """How phase latencies are obtained.

    ``constant``: the ``*_ns`` fields below are used as given (per layer for ``layer_ns``).
    ``roofline``: from the scenario's ModelShape and Hardware. ``measured``/``fitted``: from the profile JSON
    at ``profile_path`` (schema in ``spdsim/contract/profile_schema.py``).
    """

    kind: str = "roofline"
    profile_path: str = ""
    layer_ns: int = 0  # one target decoder layer, one query token
    embed_ns: int = 0
    head_ns: int = 0  # final norm + lm_head + verify/sampling of one position
    draft_step_ns: int = 0  # one serial drafter pass (chain methods), one token
    pdm_ns: int = 0  # SPD drafter (PDM) forward, whole module
    per_query_token_ns: int = 0  # extra cost per additional query token in a verify pass (constant model)
    little_step_ns: int = 0  # cascade: one pass of the little model (constant model; 0 = from layer_ns)


@dataclass(frozen=True)
class Overheads:
    """Costs the ideal closed forms ignore (docs/design.md §3). All zero means the ideal model."""

    control_ns: int = 0  # controller broadcast per cycle / iteration
    p2p_ns: int = 0  # hidden-state send between consecutive stages (added to each stage hop)
    gather_ns: int = 0  # anchor gather to the drafter per cycle
    fixed_cycle_ns: int = 0  # serial per-cycle costs: driver update, sync
    sampling_ns: int = 0  # per verification
    jitter_cv: float = 0.0  # coefficient of variation of every phase latency (lognormal); 0 = deterministic
    drafter_contention: float = 1.0  # slowdown of a stage sharing its GPU with the drafter (>= 1)


@dataclass(frozen=True)
class MethodSpec:
    """Which schedule to run and its knobs. Unused knobs are ignored by a method."""

    name: str = "spd"
    num_stages: int = 8  # SPD / PPSD pipeline depth n
    stage_layers: tuple[int, ...] = ()  # explicit per-stage layer counts (must sum to L); empty = even split
    spec_layers: int = 3  # SPD drafter depth L_s (full-size decoder layers)
    drafter_placement: str = "own-gpu"
    verify_placement: str = "controller"  # SPD: "last-stage" prices the verify inside the last stage's member
    stage_placement: str = "gpu-per-stage"  # SPD/PPSD: "one-gpu" runs every stage and the drafter on one GPU
    draft_tokens: int = 3  # K for chain / parallel methods
    draft_layers: int = 1  # drafter depth for eagle3/mtp/dflash/peagle heads, or the draft model's layers
    draft_vocab_size: int = (
        DRAFT_VOCAB_SIZE  # draft lm_head rows (SPD PDM, EAGLE-3, P-EAGLE); 0 = target vocab
    )
    draft_model_layers_fraction: float = (
        0.0  # classic draft model as a fraction of the target (0 = use draft_layers)
    )
    tensor_parallel: int = 1
    stop_threshold: float = 0.3  # SpecDec++ h
    k_min: int = 2
    k_max: int = 20
    exit_layer: int = 0  # PPSD early-exit layer (0 = L/n)
    aggregation_types: int = 0  # SPD PDM aggregation projections m (15·H² for m = 5); 0 = not priced
    rank_nodes: tuple[int, ...] = ()  # node of each rank (controller first, then the stages); empty = packed

    def draft_model_layers(self, num_layers: int | None) -> int:
        """Layers of a classic draft model (draft-model, SpecDec++'s draft LM) of a ``num_layers``-layer target:
        the fraction of it, or ``draft_layers`` (also without a model shape). One home for the methods' costs
        and the memory check."""
        if self.draft_model_layers_fraction > 0 and num_layers is not None:
            return max(1, round(self.draft_model_layers_fraction * num_layers))
        return self.draft_layers

    def cascade_draft_layers(self, num_layers: int | None) -> int:
        """Layers of the cascade's middle (draft) model: the fraction of the target, else a quarter of it (of 4
        layers without a model shape). One home for the cascade's costs and the memory check."""
        fraction = self.draft_model_layers_fraction if self.draft_model_layers_fraction > 0 else 0.25
        return max(1, round(fraction * (num_layers if num_layers is not None else 4)))


@dataclass(frozen=True)
class AcceptanceSpec:
    """Acceptance model (docs/design.md §5)."""

    kind: str = "iid"
    alpha: float = 0.8
    rates: tuple[float, ...] = ()  # unconditional per-position r_k (vLLM convention), non-increasing
    alpha_saturated: float = 0.8
    alpha_refill: float = 0.8
    trace_path: str = ""
    preset: str = ""
    head_noise: float = 0.1  # SpecDec++: sd of the acceptance head's logit error
    inner_alpha: float = 0.8  # cascade: little -> draft acceptance

    def __post_init__(self) -> None:
        for name in ("alpha", "alpha_saturated", "alpha_refill", "inner_alpha"):
            _unit_interval(getattr(self, name), f"acceptance.{name}")
        for i, rate in enumerate(self.rates):
            _unit_interval(rate, f"acceptance.rates[{i}]")


ARRIVALS = ("sequential", "closed", "poisson", "gamma", "trace")
# workload.lengths: "prompts:<dataset>" (prompt lengths of the dataset) or "answers:<dataset>" (prompt and
# reference-answer lengths); the table is spdsim/profiles/prompts/prompt_lengths.json
LENGTH_SOURCES = ("prompts", "answers")
PROMPT_DATASETS = ("mt_bench", "humaneval", "gsm8k")
ANSWER_DATASETS = ("humaneval", "gsm8k")
PREFILLS = ("fixed", "modelled")


@dataclass(frozen=True)
class Workload:
    """The requests and how they arrive (docs/serving.md). The defaults are the paper's setting: requests one
    after another, each alone on the GPUs; the serving fields take vLLM's benchmark names where one exists."""

    prompt_tokens: int = 128
    new_tokens: int = 512
    num_requests: int = 4
    prefill_ns: int = 0  # fixed cost before each request's decode (``prefill = "fixed"``)
    # arrivals: "" infers it (trace_path -> trace, arrival_rate -> poisson/gamma, max_concurrency -> closed,
    # else sequential)
    arrival: str = ""
    arrival_rate: float = 0.0  # requests/s (vLLM --request-rate)
    burstiness: float = 1.0  # gamma shape of the inter-arrival times (vLLM --burstiness; 1 = Poisson)
    max_concurrency: int = 0  # requests in flight at most (vLLM --max-concurrency); 0 = unlimited
    trace_path: str = ""  # replay: JSONL/CSV of timestamp (ms), input_length, output_length
    length_range_ratio: float = 0.0  # lengths uniform in [L(1-r), L(1+r)] (vLLM --random-range-ratio)
    lengths: str = ""  # "prompts:<dataset>" / "answers:<dataset>": lengths drawn from the prompt files' table
    max_batch: int = 1  # sequences decoded together (vLLM max_num_seqs); 1 = one request at a time
    prefill: str = "fixed"  # "fixed": prefill_ns; "modelled": a target forward over the prompt
    chunk_tokens: int = (
        0  # chunked prefill: prompt tokens per step beside the decodes; 0 = whole prompt, stalls
    )
    slo_ttft_ms: float = 0.0  # goodput SLOs (vLLM --goodput); 0 = none
    slo_tpot_ms: float = 0.0
    slo_e2el_ms: float = 0.0

    def __post_init__(self) -> None:
        for name, low in (
            ("new_tokens", 1),
            ("num_requests", 1),
            ("prompt_tokens", 0),
            ("prefill_ns", 0),
            ("max_concurrency", 0),
            ("max_batch", 1),
            ("chunk_tokens", 0),
        ):
            value = getattr(self, name)
            if value < low:
                raise SpdsimError(f"workload.{name}: must be >= {low} (got {value})")
        for name in ("arrival_rate", "slo_ttft_ms", "slo_tpot_ms", "slo_e2el_ms"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise SpdsimError(f"workload.{name}: must be a finite number >= 0 (got {value})")
        if not (
            isinstance(self.burstiness, (int, float))
            and math.isfinite(self.burstiness)
            and self.burstiness > 0
        ):
            raise SpdsimError(f"workload.burstiness: must be > 0 (got {self.burstiness})")
        if not 0.0 <= self.length_range_ratio < 1.0:
            raise SpdsimError(
                f"workload.length_range_ratio: must be in [0, 1) (got {self.length_range_ratio})"
            )
        if self.arrival not in ("", *ARRIVALS):
            raise SpdsimError(f"workload.arrival: unknown '{self.arrival}' (allowed: {', '.join(ARRIVALS)})")
        if self.lengths:
            source, _, dataset = self.lengths.partition(":")
            allowed = ANSWER_DATASETS if source == "answers" else PROMPT_DATASETS
            if source not in LENGTH_SOURCES or dataset not in allowed:
                raise SpdsimError(
                    f"workload.lengths: '{self.lengths}' must be prompts:<{'|'.join(PROMPT_DATASETS)}> or "
                    f"answers:<{'|'.join(ANSWER_DATASETS)}> (datasets with reference answers)"
                )
        if self.prefill not in PREFILLS:
            raise SpdsimError(f"workload.prefill: unknown '{self.prefill}' (allowed: {', '.join(PREFILLS)})")
        if self.chunk_tokens and self.prefill != "modelled":
            raise SpdsimError('workload.chunk_tokens: chunked prefill needs workload.prefill = "modelled"')
        kind = self.arrival_kind
        if kind in ("poisson", "gamma") and self.arrival_rate <= 0:
            raise SpdsimError(f"workload.arrival_rate: {kind} arrivals need a rate > 0 requests/s")
        if kind == "closed" and self.max_concurrency < 1:
            raise SpdsimError("workload.max_concurrency: closed-loop arrivals need a concurrency >= 1")
        if kind == "trace" and not self.trace_path:
            raise SpdsimError("workload.trace_path: trace arrivals need a file")

    @property
    def arrival_kind(self) -> str:
        """The arrival process, ``arrival`` or inferred from the fields set."""
        if self.arrival:
            return self.arrival
        if self.trace_path:
            return "trace"
        if self.arrival_rate > 0:
            return "poisson" if self.burstiness == 1.0 else "gamma"
        if self.max_concurrency > 0:
            return "closed"
        return "sequential"

    @property
    def serving(self) -> bool:
        """A serving workload (arrivals, batching or SLOs): its summary carries the serving metrics."""
        return (
            self.arrival_kind != "sequential"
            or self.max_batch > 1
            or self.prefill != "fixed"
            or any((self.slo_ttft_ms, self.slo_tpot_ms, self.slo_e2el_ms))
        )


@dataclass(frozen=True)
class Scenario:
    method: MethodSpec = field(default_factory=MethodSpec)
    model: ModelShape | None = None
    hardware: Hardware | None = None
    latency: LatencySpec = field(default_factory=LatencySpec)
    acceptance: AcceptanceSpec = field(default_factory=AcceptanceSpec)
    overheads: Overheads = field(default_factory=Overheads)
    workload: Workload = field(default_factory=Workload)
    seed: int = 0


# Fields added after run directories were first written: left out of ``to_dict`` while at their default, so a
# scenario that does not use them serialises (and hashes) exactly as before.
OPTIONAL_FIELDS = {
    "model": (
        "attention_output_gate",
        "linear_key_heads",
        "linear_value_heads",
        "linear_head_dim",
        "num_experts",
        "experts_per_token",
        "expert_intermediate_size",
    ),
    "hardware": (
        "gpus_per_node",
        "inter_node_latency_ns",
        "inter_node_bandwidth_gbps",
        "collective",
        "host_layer_ns",
        "host_call_ns",
        "host_message_ns",
        "crop_ns",
        "copy_bandwidth_gbps",
    ),
    "method": ("aggregation_types", "rank_nodes", "stage_placement"),
    "workload": (
        "arrival",
        "arrival_rate",
        "burstiness",
        "max_concurrency",
        "trace_path",
        "length_range_ratio",
        "lengths",
        "max_batch",
        "prefill",
        "chunk_tokens",
        "slo_ttft_ms",
        "slo_tpot_ms",
        "slo_e2el_ms",
    ),
}
_OPTIONAL_DEFAULTS = {
    "model": ModelShape,
    "hardware": Hardware,
    "method": MethodSpec,
    "workload": Workload,
}


def to_dict(obj: Any) -> dict[str, Any]:
    """JSON-ready dict of a dataclass tree (tuples become lists); optional fields at their default are left out."""
    data = asdict(obj)
    if isinstance(obj, Scenario):
        for section, names in OPTIONAL_FIELDS.items():
            table = data.get(section)
            if not isinstance(table, dict):
                continue
            defaults = {f.name: f.default for f in fields(_OPTIONAL_DEFAULTS[section])}
            for name in names:
                value = table.get(name)
                default = defaults[name]
                if name in table and (value == default or (isinstance(value, list) and not value)):
                    del table[name]
    return data


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a dataclass tree from a dict; unknown keys raise KeyError naming the field."""
    names = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise KeyError(f"{cls.__name__}.{key}")
        sub = _dataclass_type(cls, key)
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


_NESTED = {
    ("Scenario", "method"): MethodSpec,
    ("Scenario", "model"): ModelShape,
    ("Scenario", "hardware"): Hardware,
    ("Scenario", "latency"): LatencySpec,
    ("Scenario", "acceptance"): AcceptanceSpec,
    ("Scenario", "overheads"): Overheads,
    ("Scenario", "workload"): Workload,
}


def _dataclass_type(cls: type, key: str) -> type | None:
    sub = _NESTED.get((cls.__name__, key))
    return sub if sub is not None and is_dataclass(sub) else None
