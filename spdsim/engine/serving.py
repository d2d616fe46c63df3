"""Clients and server of a run: requests are sent as the arrival process says, wait for a place in the batch, are
prefilled and decoded (docs/serving.md §2).

The client side sends request i at its arrival time, or later when ``max_concurrency`` requests are already in
flight (vLLM's benchmark semaphore: the request is timed from when it is sent). The server side is either

* one request at a time (``max_batch = 1``): FCFS; each request's prefill, then its method's own schedule
  (``Method.run_request``) alone on the GPUs. The sequential workload through this server is the paper's setting,
  and the engine's behaviour before serving workloads existed, event for event;
* a batch (``max_batch > 1``): the method's ``serve_batch`` schedule runs every admitted request together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import simpy

from spdsim.engine.arrivals import RequestSpec, concurrency_limit
from spdsim.errors import SpdsimError
from spdsim.scenario.topology import topology_active


@dataclass
class ServingState:
    """What the client and the server share: the queue of sent requests and each request's timestamps."""

    queue: simpy.Store
    sent_ns: list[int]  # when each request was sent (its TTFT and E2E are measured from here)
    start_ns: list[int]  # when its decode began (after its prefill)
    limit: int  # requests in flight at most (0: unlimited)
    in_flight: int = 0
    slot_freed: simpy.Event | None = None  # what a client waiting for a place waits on

    def finish(self, request: int) -> None:
        """A request committed its last token: its client may send the next one."""
        self.in_flight -= 1
        if self.slot_freed is not None:
            self.slot_freed.succeed()
            self.slot_freed = None


def start_serving(env: simpy.Environment, scenario, requests: tuple[RequestSpec, ...]) -> ServingState:
    """Start the client process; the server reads ``state.queue``."""
    limit = concurrency_limit(scenario.workload)
    state = ServingState(
        queue=simpy.Store(env),
        sent_ns=[0] * len(requests),
        start_ns=[0] * len(requests),
        limit=limit,
    )

    def client():
        # requests due at one instant are sent together, before the server's next step looks at the queue
        for spec in requests:
            if spec.arrival_ns > env.now:
                yield env.timeout(spec.arrival_ns - env.now)
            while state.limit and state.in_flight >= state.limit:
                state.slot_freed = env.event()
                yield state.slot_freed
            state.in_flight += 1
            state.sent_ns[spec.index] = int(env.now)
            state.queue.put(spec)

    env.process(client())
    return state


def request_scenario(scenario, spec: RequestSpec):
    """The scenario one request decodes under: the run's, with this request's prompt and output lengths."""
    workload = scenario.workload
    if spec.prompt_tokens == workload.prompt_tokens and spec.new_tokens == workload.new_tokens:
        return scenario
    return replace(
        scenario, workload=replace(workload, prompt_tokens=spec.prompt_tokens, new_tokens=spec.new_tokens)
    )


def prefill_cost_ns(scenario, latency, prompt_tokens: int) -> int:
    """One request's prefill: the fixed ``prefill_ns``, or a target forward over its prompt (``modelled``)."""
    workload = scenario.workload
    if workload.prefill == "fixed":
        return workload.prefill_ns
    if prompt_tokens <= 0:
        return 0
    tp = max(scenario.method.tensor_parallel, 1)
    return int(latency.target_ns(prompt_tokens, prompt_tokens, tp))


def serve_one_at_a_time(
    env, context, method, state: ServingState, streams, count: int, context_for: Callable
):
    """FCFS, one request on the GPUs at a time: its prefill, then its method's schedule."""
    for _ in range(count):
        spec = yield state.queue.get()
        request_context = context_for(spec)
        prefill = prefill_cost_ns(request_context.scenario, context.latency, spec.prompt_tokens)
        if prefill > 0:
            yield env.timeout(prefill)
        state.start_ns[spec.index] = int(env.now)
        yield env.process(method.run_request(env, request_context, spec.index, streams[spec.index]))
        state.finish(spec.index)


def check_batching(scenario, method) -> None:
    """A batch needs a schedule that can run one; one-line refusal otherwise."""
    if scenario.workload.max_batch <= 1:
        return
    if method.serve_batch is None:
        raise SpdsimError(
            f"workload.max_batch: method '{method.name}' has no batched schedule "
            "(batching covers ar, draft-model, eagle3, mtp, dflash, peagle, spd and ppsd)"
        )
    if method.pipeline:
        spec = scenario.method
        unmodelled = {
            "workload.chunk_tokens": scenario.workload.chunk_tokens > 0,
            "overheads.jitter_cv": scenario.overheads.jitter_cv > 0,
            "hardware topology (nodes, rank_nodes)": topology_active(scenario.hardware, spec.rank_nodes),
            "method.verify_placement = last-stage": spec.verify_placement == "last-stage",
            "method.exit_layer": spec.name == "ppsd" and spec.exit_layer > 0,
        }
        used = [name for name, on in unmodelled.items() if on]
        if used:
            raise SpdsimError(
                f"workload.max_batch: batched {spec.name} does not model {', '.join(used)} yet "
                "(docs/serving.md §4); use max_batch = 1 or drop them"
            )
