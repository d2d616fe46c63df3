"""GPU memory: what each GPU of a run holds (weights, KV cache and recurrent states) must fit its memory.

Checked where scenarios are built (``spdsim.scenario.files.build_scenario``), after the size limits: a run whose
busiest GPU needs more than ``hardware.memory_gib`` ends in one line naming that GPU and the fix, instead of a
prediction for a deployment that cannot exist. ``hardware.memory_gib = 0`` turns the check off.

What a GPU holds (bytes of ``model.dtype_bytes`` each; activations, workspaces and the CUDA context are left
out, so the check is a lower bound):

* weights: the embedding on the GPU that embeds, the lm_head on the one that verifies (a second copy when a
  pipeline puts them on different GPUs, tied or not), its decoder layers (a mixture of experts holds all of its
  experts), and the drafter where it runs; tensor parallelism shards a GPU's weights and caches evenly;
* caches: K and V of every full-attention layer for every position of every sequence in flight (prompt + new
  tokens), and one recurrent state per Gated-DeltaNet layer and sequence.

Where drafters run follows the methods (``spdsim.methods``): chain, adaptive and parallel drafters on the first
GPU; SPD's drafter (PDM) on its own GPU or on stage 0; PPSD's early-exit head on stage 0.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from spdsim.contract import shape
from spdsim.contract.vocabulary import PIPELINE_METHODS
from spdsim.scenario.checks import check
from spdsim.scenario.config import ModelShape, Scenario, Workload

GIB = 2**30


@dataclass(frozen=True)
class GpuLoad:
    """What one GPU (or each GPU of a tensor-parallel group) holds, in bytes."""

    gpu: str
    weight_bytes: float
    cache_bytes: float

    @property
    def total_bytes(self) -> float:
        return self.weight_bytes + self.cache_bytes


def sequences_in_flight(workload: Workload) -> int:
    """Sequences whose caches are held at once: the decode batch (``max_batch``, one request at a time by
    default), capped by the concurrency and by the number of requests."""
    sequences = workload.max_batch
    if workload.max_concurrency:
        sequences = min(sequences, workload.max_concurrency)
    return max(1, min(sequences, workload.num_requests))


def full_layer_params(s: ModelShape) -> float:
    """A full-attention decoder layer as a GPU holds it (every expert of a MoE)."""
    return shape.full_layer_params(s, all_experts=True)


def linear_layer_params(s: ModelShape) -> float:
    """A Gated-DeltaNet layer as a GPU holds it; without its dims, a full layer."""
    return shape.linear_layer_params(s, all_experts=True)


def _full_share(s: ModelShape) -> float:
    return max(s.num_layers - s.linear_attention_layers, 0) / s.num_layers


def _layers(s: ModelShape, layers: float, positions: int, sequences: int) -> tuple[float, float]:
    """(weight bytes, cache bytes) of ``layers`` target layers, the hybrid's layer kinds in proportion."""
    share = _full_share(s)
    params = layers * (share * full_layer_params(s) + (1.0 - share) * linear_layer_params(s))
    kv_per_position = 2 * s.num_kv_heads * s.head_dim * s.dtype_bytes
    if s.linear_head_dim:
        state = s.linear_value_heads * s.linear_head_dim * s.linear_head_dim * s.dtype_bytes
    else:
        state = s.num_attention_heads * s.head_dim * s.head_dim * s.dtype_bytes
    cache = sequences * layers * (share * positions * kv_per_position + (1.0 - share) * state)
    return params * s.dtype_bytes, cache


def layer_weight_bytes(s: ModelShape, layers: float) -> float:
    """Weight bytes of ``layers`` target layers, the hybrid's layer kinds in proportion (a stage's weights)."""
    return _layers(s, layers, 0, 0)[0]


def decode_step_weight_bytes(s: ModelShape) -> float:
    """Weight bytes one decode step of the whole target reads: every layer and the lm_head (the embedding gives
    one row). What an AR step's fraction of the copy bandwidth is measured against."""
    return layer_weight_bytes(s, s.num_layers) + s.vocab_size * s.hidden_size * s.dtype_bytes


def _full_layers(s: ModelShape, layers: int, positions: int, sequences: int) -> tuple[float, float]:
    """Drafter layers: full-attention copies of the target's layer shape."""
    kv_per_position = 2 * s.num_kv_heads * s.head_dim * s.dtype_bytes
    return layers * full_layer_params(s) * s.dtype_bytes, sequences * layers * positions * kv_per_position


def _language_model(s: ModelShape, layers: int, positions: int, sequences: int) -> tuple[float, float]:
    """A separate LM of the target's layer shape (classic draft model, cascade): layers + embedding + head."""
    weights, cache = _layers(s, layers, positions, sequences)
    matrices = 1 if s.tied_embeddings else 2
    return weights + matrices * s.vocab_size * s.hidden_size * s.dtype_bytes, cache


def _drafter(scenario: Scenario, positions: int, sequences: int) -> tuple[float, float]:
    """(weight bytes, cache bytes) of a non-pipeline method's drafter (0, 0 for AR)."""
    s, method = scenario.model, scenario.method
    assert s is not None
    draft_vocab = method.draft_vocab_size or s.vocab_size
    matrix = s.hidden_size * s.hidden_size * s.dtype_bytes
    name = method.name
    if name in ("eagle3", "dflash", "peagle"):
        weights, cache = _full_layers(s, method.draft_layers, positions, sequences)
        fc = 3 * matrix if name == "eagle3" else 0  # EAGLE-3 fuses three target features
        return weights + fc + draft_vocab * s.hidden_size * s.dtype_bytes, cache
    if name == "mtp":  # one layer and the projection of [embedding; hidden], the verifier's own lm_head
        weights, cache = _full_layers(s, 1, positions, sequences)
        return weights + 2 * matrix, cache
    if name in ("draft-model", "specdecpp"):
        return _language_model(s, method.draft_model_layers(s.num_layers), positions, sequences)
    if name == "cascade":
        big = _language_model(s, method.cascade_draft_layers(s.num_layers), positions, sequences)
        little = _language_model(s, method.draft_layers, positions, sequences)
        return big[0] + little[0], big[1] + little[1]
    return 0.0, 0.0


def gpu_loads(scenario: Scenario) -> list[GpuLoad]:
    """What every GPU of the run holds (one entry per tensor-parallel group, which shares it evenly)."""
    s, method, workload = scenario.model, scenario.method, scenario.workload
    assert s is not None
    sequences = sequences_in_flight(workload)
    positions = workload.prompt_tokens + workload.new_tokens
    tp = max(method.tensor_parallel, 1)
    vocab_matrix = float(s.vocab_size * s.hidden_size * s.dtype_bytes)
    if method.name not in PIPELINE_METHODS:
        weights, cache = _layers(s, s.num_layers, positions, sequences)
        weights += vocab_matrix * (1 if s.tied_embeddings else 2)
        draft_weights, draft_cache = _drafter(scenario, positions, sequences)
        label = "gpu0" if tp == 1 else f"gpu0 (of tensor_parallel {tp})"
        return [GpuLoad(label, weights / tp + draft_weights, cache / tp + draft_cache)]
    counts = method.stage_layers or (s.num_layers // max(method.num_stages, 1),) * method.num_stages
    last = len(counts) - 1
    loads: list[GpuLoad] = []
    for index, layers in enumerate(counts):
        weights, cache = _layers(s, layers, positions, sequences)
        weights += vocab_matrix * ((index == 0) + (index == last))
        loads.append(GpuLoad(f"stage {index}", weights / tp, cache / tp))
    if method.name == "ppsd":  # the early-exit head
        loads[0] = replace(loads[0], weight_bytes=loads[0].weight_bytes + vocab_matrix)
        return loads
    m = method.aggregation_types
    weights, cache = _full_layers(s, method.spec_layers, positions, sequences)
    weights += m * (m + 1) // 2 * s.hidden_size * s.hidden_size * s.dtype_bytes
    weights += (method.draft_vocab_size or s.vocab_size) * s.hidden_size * s.dtype_bytes
    if method.drafter_placement != "stage0":
        return [*loads, GpuLoad("the drafter's GPU", weights, cache)]
    stage0 = loads[0]
    loads[0] = GpuLoad("stage 0 with the drafter", stage0.weight_bytes + weights, stage0.cache_bytes + cache)
    return loads


def fits(scenario: Scenario) -> bool:
    """Whether the busiest GPU holds its weights and caches (always, without a model, hardware or memory_gib)."""
    model, hardware = scenario.model, scenario.hardware
    if model is None or hardware is None or hardware.memory_gib <= 0:
        return True
    return max(load.total_bytes for load in gpu_loads(scenario)) <= hardware.memory_gib * GIB


def check_memory(scenario: Scenario) -> Scenario:
    """Raise SpdsimError (one line) if the busiest GPU needs more than ``hardware.memory_gib``."""
    model, hardware = scenario.model, scenario.hardware
    if model is None or hardware is None or hardware.memory_gib <= 0:
        return scenario
    worst = max(gpu_loads(scenario), key=lambda load: load.total_bytes)
    capacity = hardware.memory_gib * GIB
    sequences = sequences_in_flight(scenario.workload)
    positions = scenario.workload.prompt_tokens + scenario.workload.new_tokens
    check(
        worst.total_bytes <= capacity,
        f"hardware.memory_gib: {model.name} does not fit on {hardware.name} ({hardware.memory_gib:g} GiB per GPU): "
        f"{scenario.method.name}'s {worst.gpu} needs {worst.total_bytes / GIB:.1f} GiB (weights "
        f"{worst.weight_bytes / GIB:.1f} GiB + caches {worst.cache_bytes / GIB:.1f} GiB for {sequences} "
        f"sequence(s) of {positions:,} positions); spread it over more GPUs (method.num_stages, "
        "method.tensor_parallel), or shorten workload.prompt_tokens / new_tokens, or pick hardware with more memory",
    )
    return scenario
