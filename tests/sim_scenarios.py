"""Small scenario builders shared by the simulator tests (not a test module)."""

from __future__ import annotations

from spdsim.scenario.config import (
    AcceptanceSpec,
    Hardware,
    LatencySpec,
    MethodSpec,
    ModelShape,
    Overheads,
    Scenario,
    Workload,
)

TOY_SHAPE = ModelShape("toy-32l", 32, 256, 4, 2, 64, 512, 1000)
QWEN35_4B_SHAPE = ModelShape("qwen3.5-4b", 32, 2560, 16, 4, 256, 9216, 248320, tied_embeddings=True)
H100 = Hardware(
    "h100",
    mem_bandwidth_gbps=3020.0,
    peak_tflops=989.0,
    p2p_latency_ns=8_000,
    p2p_bandwidth_gbps=300.0,
    allreduce_latency_ns=10_000,
)


def ideal(
    name: str,
    alpha: float = 0.8,
    width: int = 4,
    *,
    new_tokens: int = 1000,
    requests: int = 2,
    seed: int = 0,
    layer_ns: int = 1_000,
    draft_step_ns: int = 2_000,
    acceptance: AcceptanceSpec | None = None,
    overheads: Overheads | None = None,
    **method_fields,
) -> Scenario:
    """Zero-overhead constant-latency scenario: T_t(1) = 32 layers x ``layer_ns``, PDM = one layer."""
    method = MethodSpec(
        name=name,
        num_stages=width,
        draft_tokens=width,
        spec_layers=1,
        k_min=min(2, width),
        k_max=width,
        **method_fields,
    )
    return Scenario(
        method=method,
        model=TOY_SHAPE,
        hardware=H100,
        latency=LatencySpec(
            kind="constant",
            layer_ns=layer_ns,
            draft_step_ns=draft_step_ns,
            pdm_ns=layer_ns,
            little_step_ns=500,
        ),
        acceptance=acceptance or AcceptanceSpec(kind="iid", alpha=alpha, head_noise=0.3, inner_alpha=0.7),
        overheads=overheads or Overheads(),
        workload=Workload(prompt_tokens=64, new_tokens=new_tokens, num_requests=requests),
        seed=seed,
    )


def roofline(name: str, **method_fields) -> Scenario:
    """A realistic roofline scenario (Qwen3.5-4B shape on an H100) with small overheads and jitter."""
    return Scenario(
        method=MethodSpec(name=name, **method_fields),
        model=QWEN35_4B_SHAPE,
        hardware=H100,
        latency=LatencySpec(kind="roofline"),
        acceptance=AcceptanceSpec(kind="iid", alpha=0.8),
        overheads=Overheads(
            control_ns=20_000, p2p_ns=5_000, gather_ns=10_000, sampling_ns=15_000, jitter_cv=0.05
        ),
        workload=Workload(prompt_tokens=128, new_tokens=200, num_requests=2, prefill_ns=1_000_000),
        seed=7,
    )
