"""Run a Scenario on SimPy and return a Result (integer-nanosecond clock, deterministic).

Requests are sent by the workload's arrival process and served one at a time or in batches
(``spdsim.engine.serving``): a prefill, then the method's decode schedule for the request's output tokens (the
prefill's own token is not counted). Each request is one SimPy process whose
iterations (SPD cycles, draft-verify iterations, AR steps) are single timeouts of a computed length; busy spans
of every resource are recorded as data, not as SimPy events, which keeps the event count per cycle at one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import simpy

from spdsim.engine.arrivals import RequestSpec, build_requests
from spdsim.engine.result import Interval, Result, StepRequest, TokenCommit, Verification
from spdsim.engine.serving import check_batching, request_scenario, serve_one_at_a_time, start_serving
from spdsim.engine.table import Table, TableBuilder
from spdsim.latency.build import build_latency_model
from spdsim.latency.model import LatencyModel
from spdsim.scenario.acceptance import AcceptanceModel, build_acceptance_model
from spdsim.scenario.config import Scenario

_CHUNK = 4096


class Recorder:
    """Mutable sink of one run: commits, verifications and (optionally) resource busy spans, kept as rows of
    plain tuples or numpy column blocks (``spdsim.engine.table``) rather than one object per row."""

    def __init__(self, record_intervals: bool):
        self.record_intervals = record_intervals
        self.token_table = TableBuilder(TokenCommit, bools=("from_draft",))
        self.span_table = TableBuilder(Interval, text=("resource", "kind", "label"))
        self.verification_table = TableBuilder(Verification, text=("state",))
        self.step_table = TableBuilder(StepRequest)
        self.tokens = self.token_table.rows  # (request, index, commit_ns, iteration, from_draft)
        self.intervals = self.span_table.rows  # (resource, start_ns, end_ns, kind, label, request, iteration)
        self.verifications = (
            self.verification_table.rows
        )  # (request, iteration, time_ns, drafted, accepted, state)
        self.iterations = 0
        self.busy_ns: dict[str, int] = {}  # totals kept by schedules that skip interval recording

    def interval(
        self, resource: str, start_ns: int, end_ns: int, kind: str, label: str, request: int, iteration: int
    ) -> int:
        """Record a busy span (skipped when empty; only totalled when not recording); returns its index for a
        later relabel, or -1."""
        if end_ns <= start_ns:
            return -1
        if not self.record_intervals:
            self.add_busy(resource, end_ns - start_ns)
            return -1
        self.intervals.append((resource, start_ns, end_ns, kind, label, request, iteration))
        return len(self.span_table) - 1

    def add_busy(self, resource: str, duration_ns: int) -> None:
        self.busy_ns[resource] = self.busy_ns.get(resource, 0) + duration_ns

    def resource_busy(self, spans: Table) -> tuple[tuple[str, int], ...]:
        """Busy totals per resource: from the recorded spans, else from the schedules' running totals."""
        totals = dict(self.busy_ns)
        if spans:
            durations = spans.column("end_ns") - spans.column("start_ns")
            for resource, busy in spans.totals_by("resource", durations).items():
                totals[resource] = totals.get(resource, 0) + busy
        return tuple(sorted(totals.items()))

    def step_members(self, step: int, requests: list[int]) -> None:
        """The requests a batched step serves (recorded with the spans only: the trace needs them)."""
        if self.record_intervals:
            self.step_table.rows.extend((step, request) for request in requests)

    def relabel(self, index: int, kind: str) -> None:
        """Change a recorded span's kind (e.g. to FLUSHED when its token is discarded)."""
        if index >= 0:
            self.span_table.set(index, "kind", kind)

    def commit(self, request: int, index: int, commit_ns: int, iteration: int, from_draft: bool) -> None:
        self.tokens.append((request, index, commit_ns, iteration, from_draft))

    def verification(
        self, request: int, iteration: int, time_ns: int, drafted: int, accepted: int, state: str
    ) -> None:
        self.verifications.append((request, iteration, time_ns, drafted, accepted, state))


class Jitter:
    """Lognormal latency multipliers with mean 1 and the scenario's coefficient of variation (prefetched)."""

    def __init__(self, rng: np.random.Generator, cv: float):
        self.enabled = cv > 0
        self._rng = rng
        self._sigma = float(np.sqrt(np.log1p(cv * cv))) if self.enabled else 0.0
        self._mu = -0.5 * self._sigma**2
        self._factors: list[float] = []

    def apply(self, latency_ns: int) -> int:
        """One jittered phase latency (integer ns)."""
        if not self.enabled or latency_ns <= 0:
            return latency_ns
        if not self._factors:
            self._factors = self._rng.lognormal(self._mu, self._sigma, size=_CHUNK).tolist()
        return int(latency_ns * self._factors.pop() + 0.5)


@dataclass(frozen=True)
class RunContext:
    """What a method's request process needs: the scenario, its models and the run's recorder."""

    scenario: Scenario
    latency: LatencyModel
    acceptance: AcceptanceModel
    recorder: Recorder


@dataclass(frozen=True)
class RequestStreams:
    """Independent random streams of one request, one per purpose."""

    acceptance: np.random.Generator
    jitter: Jitter
    policy: np.random.Generator  # SpecDec++ acceptance-head noise
    inner: np.random.Generator  # cascade: inner (little -> draft) acceptance


def request_streams(scenario: Scenario, count: int | None = None) -> list[RequestStreams]:
    """Per-request streams derived from ``scenario.seed`` with SeedSequence.spawn (stable across runs; the
    spawn order — acceptance, jitter, policy, inner — is part of the reproducibility contract)."""
    count = scenario.workload.num_requests if count is None else count
    children = np.random.SeedSequence(scenario.seed).spawn(count)
    streams = []
    for child in children:
        acceptance, jitter, policy, inner = (np.random.default_rng(s) for s in child.spawn(4))
        streams.append(
            RequestStreams(acceptance, Jitter(jitter, scenario.overheads.jitter_cv), policy, inner)
        )
    return streams


def simulate(scenario: Scenario, *, record_intervals: bool = True) -> Result:
    """Simulate ``scenario``; the same scenario (seed included) gives an identical Result."""
    from spdsim.methods import get_method

    method = get_method(scenario.method.name)
    recorder = Recorder(record_intervals)
    context = RunContext(
        scenario=scenario,
        latency=build_latency_model(scenario),
        acceptance=build_acceptance_model(scenario.acceptance),
        recorder=recorder,
    )
    env = simpy.Environment()
    requests = build_requests(scenario)
    streams = request_streams(scenario, len(requests))
    state = start_serving(env, scenario, requests)
    contexts: dict[tuple[int, int], RunContext] = {}

    def context_for(spec: RequestSpec) -> RunContext:
        key = (spec.prompt_tokens, spec.new_tokens)
        if key not in contexts:
            contexts[key] = replace(context, scenario=request_scenario(scenario, spec))
        return contexts[key]

    check_batching(scenario, method)
    server = method.serve_batch if scenario.workload.max_batch > 1 else serve_one_at_a_time
    assert server is not None  # check_batching refused it
    env.process(server(env, context, method, state, streams, len(requests), context_for))
    env.run()
    spans = recorder.span_table.build()
    return Result(
        scenario=scenario,
        tokens=recorder.token_table.build(),
        intervals=spans,
        verifications=recorder.verification_table.build(),
        iterations=recorder.iterations,
        gpus=method.gpus(scenario),
        end_ns=int(env.now),
        request_start_ns=tuple(state.start_ns),
        request_sent_ns=tuple(state.sent_ns),
        resource_busy_ns=recorder.resource_busy(spans),
        step_requests=recorder.step_table.build() if len(recorder.step_table) else (),
    )
