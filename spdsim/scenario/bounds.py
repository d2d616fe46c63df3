"""Size limits of a scenario, checked where scenarios are built (``spdsim.scenario.files.build_scenario``).

``spdsim.scenario.checks`` checks that a scenario makes sense; this layer checks that it can be simulated on an
ordinary machine in reasonable time and memory, so that a typo (``num_requests=1000000000``) ends in one line
instead of a hang or a MemoryError. The limits follow from the simulator's measured costs
(``studies/benchmarks/results/bench_simulator_cpu.md``; on a 2-core CPU): about 30-130 µs and 0.3-0.5 kB per simulated
token without busy intervals, and up to ~14 kB per token with them (SPD n = 8; the traced first request of
``simulate`` and ``timeline``):

* ``MAX_TOKENS`` = 1,000,000 decode tokens per run (num_requests × new_tokens): at most ~2 min and ~0.5 GB;
* ``MAX_NEW_TOKENS`` = 100,000 per request: the traced request then needs at most ~1.4 GB;
* ``MAX_DRAFT`` = 256 drafts per iteration (K, k_max, positional rates): per-iteration work and prefetched
  random numbers grow with it;
* ``MAX_PHASE_NS`` = 100 s per phase: a million tokens of a few dozen such phases still fit int64 nanoseconds;
* a roofline model must be able to stream its weights for one token within ``MAX_PHASE_NS``.
"""

from __future__ import annotations

from dataclasses import fields

from spdsim.scenario.checks import check
from spdsim.scenario.config import Scenario
from spdsim.scenario.memory import decode_step_weight_bytes

MAX_TOKENS = 1_000_000
MAX_NEW_TOKENS = 100_000
MAX_REQUESTS = 100_000
MAX_PROMPT_TOKENS = 10_000_000
MAX_DRAFT = 256
MAX_STAGES = 1024
MAX_LAYERS = 10_000
MAX_DIM = 10_000_000
MAX_PHASE_NS = 100 * 10**9
MAX_JITTER_CV = 10.0
MAX_CONTENTION = 100.0
MAX_HW = 1e7  # GB/s, TFLOP/s, GiB: far above any accelerator
MAX_SEED = 2**63 - 1


def _at_most(value: float, limit: float, where: str, why: str = "") -> None:
    check(value <= limit, f"{where}: {value:g} exceeds the limit of {limit:,g}{why}")


def check_bounds(scenario: Scenario) -> Scenario:
    """Raise SpdsimError naming the first field beyond its limit; return the scenario unchanged."""
    check(0 <= scenario.seed <= MAX_SEED, f"seed: must be in 0..2**63-1 (got {scenario.seed})")
    work = scenario.workload
    _at_most(work.new_tokens, MAX_NEW_TOKENS, "workload.new_tokens")
    _at_most(work.num_requests, MAX_REQUESTS, "workload.num_requests")
    _at_most(work.prompt_tokens, MAX_PROMPT_TOKENS, "workload.prompt_tokens")
    _at_most(work.prefill_ns, MAX_PHASE_NS, "workload.prefill_ns")
    check(
        work.num_requests * work.new_tokens <= MAX_TOKENS,
        f"workload: num_requests x new_tokens = {work.num_requests * work.new_tokens:,} exceeds "
        f"{MAX_TOKENS:,} tokens per run (minutes and GBs of simulation)",
    )
    method = scenario.method
    for name in ("draft_tokens", "k_max", "k_min"):
        _at_most(getattr(method, name), MAX_DRAFT, f"method.{name}")
    for name in ("num_stages", "tensor_parallel"):
        _at_most(getattr(method, name), MAX_STAGES, f"method.{name}")
    for name in ("spec_layers", "draft_layers", "exit_layer"):
        _at_most(getattr(method, name), MAX_LAYERS, f"method.{name}")
    _at_most(method.draft_vocab_size, MAX_DIM, "method.draft_vocab_size")
    _at_most(len(scenario.acceptance.rates), MAX_DRAFT, "acceptance.rates (count)")
    _at_most(scenario.acceptance.head_noise, 1e3, "acceptance.head_noise")
    for section, where in ((scenario.latency, "latency"), (scenario.overheads, "overheads")):
        for f in fields(section):
            if f.name.endswith("_ns"):
                _at_most(getattr(section, f.name), MAX_PHASE_NS, f"{where}.{f.name}", " ns (100 s)")
    _at_most(scenario.overheads.jitter_cv, MAX_JITTER_CV, "overheads.jitter_cv")
    _at_most(scenario.overheads.drafter_contention, MAX_CONTENTION, "overheads.drafter_contention")
    model = scenario.model
    if model is not None:
        _at_most(model.num_layers, MAX_LAYERS, "model.num_layers")
        _at_most(model.dtype_bytes, 16, "model.dtype_bytes")
        dims = ("hidden_size", "intermediate_size", "vocab_size", "num_attention_heads", "head_dim")
        for name in (*dims, "num_experts", "expert_intermediate_size"):
            _at_most(getattr(model, name), MAX_DIM, f"model.{name}")
    hardware = scenario.hardware
    if hardware is not None:
        for f in fields(hardware):
            value = getattr(hardware, f.name)
            if f.name.endswith("_ns"):
                _at_most(value, MAX_PHASE_NS, f"hardware.{f.name}", " ns (100 s)")
            elif isinstance(value, float) and f.name.endswith(("_gbps", "_tflops", "_gib")):
                _at_most(value, MAX_HW, f"hardware.{f.name}")
    if model is not None and hardware is not None and scenario.latency.kind == "roofline":
        _check_roofline_token_time(scenario)
    return scenario


def _check_roofline_token_time(scenario: Scenario) -> None:
    """The weights read for one token (attention + MLP + lm_head) at the hardware's bandwidth: <= 100 s."""
    m, hw = scenario.model, scenario.hardware
    assert m is not None and hw is not None  # roofline scenarios have both (checked before)
    weight_bytes = decode_step_weight_bytes(m)
    seconds = weight_bytes / (hw.stream_bandwidth_gbps * hw.bandwidth_efficiency * 1e9)
    check(
        seconds * 1e9 <= MAX_PHASE_NS,
        f"model/hardware: reading {weight_bytes:.3g} bytes of weights per token at "
        f"{hw.stream_bandwidth_gbps:g} GB/s takes {seconds:.3g} s (limit {MAX_PHASE_NS / 1e9:g} s per phase)",
    )
