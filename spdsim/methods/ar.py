"""Autoregressive decoding: one target step per token, optionally tensor-parallel over ``tp`` GPUs."""

from __future__ import annotations

from spdsim.engine.result import BUSY, COMM
from spdsim.methods import Method
from spdsim.methods.batched import serve_chain_batch
from spdsim.methods.common import gpu_resources, serial_overheads_ns, target_verify_ns


def ar_step_costs(scenario, latency) -> tuple[list[int], int, int]:
    """(step_ns per committed count, control_ns, serial_ns after the step)."""
    control_ns, serial_ns = serial_overheads_ns(scenario, latency, with_verify=True)
    serial_ns += latency.cycle_fixed_ns(1)  # a profile's measured per-step cost, fitted from AR runs (n = 1)
    return target_verify_ns(scenario, latency, 1).tolist(), control_ns, serial_ns


def run_request(env, context, request, streams):
    scenario = context.scenario
    recorder = context.recorder
    jitter = streams.jitter
    step_ns, control_ns, serial_ns = ar_step_costs(scenario, context.latency)
    resources = gpu_resources(scenario.method.tensor_parallel)
    for index in range(scenario.workload.new_tokens):
        start = int(env.now)
        control = jitter.apply(control_ns)
        step = jitter.apply(step_ns[index])
        serial = jitter.apply(serial_ns)
        yield env.timeout(control + step + serial)
        if recorder.record_intervals:
            recorder.interval(resources[0], start, start + control, COMM, "control", request, index)
            for resource in resources:
                recorder.interval(
                    resource, start + control, start + control + step, BUSY, "forward", request, index
                )
            end = start + control + step
            recorder.interval(resources[0], end, end + serial, BUSY, "sample", request, index)
        recorder.commit(request, index, int(env.now), index, False)
        recorder.iterations += 1


METHOD = Method(
    name="ar",
    description="autoregressive decoding, one target step per token (tensor-parallel over tp GPUs)",
    family="ar",
    gpus=lambda scenario: max(scenario.method.tensor_parallel, 1),
    run_request=run_request,
    serve_batch=serve_chain_batch,
)
