"""Metrics derived from a Result, with vLLM's definitions (docs/design.md §8) plus the pipeline ones.

* acceptance rate = accepted / drafted;
* mean acceptance length = 1 + accepted / verifications (bonus included); pipelines: tokens per verification;
* TPOT = decode time / generated tokens; tokens/s over decode time (prefill excluded);
* pipelines: ρ = tokens per cycle, n·ρ, bubble fraction = 1 - mean stage busy fraction.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from spdsim.engine.result import Result
from spdsim.engine.table import Table
from spdsim.methods import get_method
from spdsim.scenario.config import AcceptanceSpec
from spdsim.units import ns_to_ms, ns_to_us, per_s


def decode_ns(result: Result) -> int:
    """Simulated decode time: the run's span minus the fixed prefill costs (sequential requests); a serving run's
    whole span from the first request sent to the last token (vLLM's benchmark duration)."""
    workload = result.scenario.workload
    if workload.serving:
        return result.end_ns - min(result.request_sent_ns, default=0)
    return result.end_ns - workload.num_requests * workload.prefill_ns


def summarize(result: Result, baseline: Result | None = None) -> dict[str, Any]:
    """One row of the comparison table (JSON-ready; deterministic for a deterministic Result)."""
    method = get_method(result.scenario.method.name)
    tokens = len(result.tokens)
    duration_ns = decode_ns(result)
    tokens_per_s = per_s(tokens, duration_ns)
    drafted = sum(v.drafted for v in result.verifications)
    accepted = sum(v.accepted for v in result.verifications)
    verifications = len(result.verifications)
    speedup: float | None = None
    rho: float | None
    n_rho: float | None
    if baseline is not None:
        baseline_tokens_per_s = per_s(len(baseline.tokens), decode_ns(baseline))
        speedup = tokens_per_s / baseline_tokens_per_s if baseline_tokens_per_s > 0 else None
    if method.pipeline:
        acceptance_length = tokens / verifications if verifications else 1.0
        rho = tokens / result.iterations if result.iterations else 0.0
        n_rho = num_stages(result) * rho
        bubble = bubble_fraction(result)
    else:
        acceptance_length = 1.0 + accepted / verifications if verifications else 1.0
        rho = n_rho = None
        bubble = 0.0
    summary = {
        "method": result.scenario.method.name,
        "gpus": result.gpus,
        "tokens": tokens,
        "tokens_per_s": tokens_per_s,
        "tpot_ms": ns_to_ms(duration_ns) / tokens if tokens else None,
        "speedup": speedup,
        "mean_acceptance_length": acceptance_length,
        "acceptance_rate": accepted / drafted if drafted else None,
        "rho": rho,
        "n_rho": n_rho,
        "bubble_fraction": bubble,
        "iterations": result.iterations,
        "end_ms": ns_to_ms(result.end_ns),
    }
    if result.scenario.workload.serving:
        summary.update(serving_metrics(result))
    return summary


SERVING_LATENCIES = ("ttft", "tpot", "itl", "e2el")
PERCENTILES = (("median", 50), ("p90", 90), ("p99", 99))


def request_latencies_ns(result: Result) -> dict[str, np.ndarray]:
    """Per request (index order): sent, first and last token (ns) and output tokens; and every ITL (ns).

    ITL counts the gaps between a request's distinct commit times: tokens a speculative verification commits
    together reach the client as one chunk, which vLLM's benchmark times once."""
    count = len(result.request_sent_ns)
    tokens = result.tokens
    if isinstance(tokens, Table):
        request, commit = tokens.column("request"), tokens.column("commit_ns")
    else:
        request = np.asarray([t.request for t in tokens], dtype=np.int64)
        commit = np.asarray([t.commit_ns for t in tokens], dtype=np.int64)
    order = np.lexsort((commit, request))
    request, commit = request[order], commit[order]
    produced = np.bincount(request, minlength=count)
    last_of = np.cumsum(produced) - 1
    first_of = last_of - produced + 1
    has = produced > 0
    first = np.where(has, commit[np.clip(first_of, 0, None)] if len(commit) else 0, 0)
    last = np.where(has, commit[np.clip(last_of, 0, None)] if len(commit) else 0, 0)
    gaps = np.diff(commit)
    itl = gaps[(request[1:] == request[:-1]) & (gaps > 0)]
    return {
        "sent": np.asarray(result.request_sent_ns, dtype=np.int64),
        "first": first,
        "last": last,
        "tokens": produced,
        "itl": itl,
    }


def serving_metrics(result: Result) -> dict[str, Any]:
    """vLLM's serving benchmark metrics: TTFT, TPOT, ITL, E2E latency (mean, median, p90, p99, in ms), request
    and output-token throughput, and request goodput under the workload's SLOs (docs/metrics.md §3)."""
    workload = result.scenario.workload
    per = request_latencies_ns(result)
    ttft = per["first"] - per["sent"]
    e2el = per["last"] - per["sent"]
    several = per["tokens"] > 1
    tpot = (per["last"] - per["first"])[several] / (per["tokens"][several] - 1)
    duration_ns = decode_ns(result)
    values = {"ttft": ttft, "tpot": tpot, "itl": per["itl"], "e2el": e2el}
    metrics: dict[str, Any] = {
        "completed": len(per["sent"]),
        "duration_s": duration_ns / 1e9,
        "request_throughput": per_s(len(per["sent"]), duration_ns),
        "output_throughput": per_s(int(per["tokens"].sum()), duration_ns),
    }
    for name in SERVING_LATENCIES:
        data = values[name].astype(np.float64) / 1e6
        metrics[f"mean_{name}_ms"] = float(data.mean()) if len(data) else None
        for label, q in PERCENTILES:
            metrics[f"{label}_{name}_ms"] = float(np.percentile(data, q)) if len(data) else None
    slos = {"ttft": workload.slo_ttft_ms, "tpot": workload.slo_tpot_ms, "e2el": workload.slo_e2el_ms}
    if any(slos.values()):
        request_tpot = np.zeros(len(ttft))
        request_tpot[several] = tpot
        good = np.ones(len(ttft), dtype=bool)
        for name, limit in slos.items():
            if limit:
                good &= {"ttft": ttft, "tpot": request_tpot, "e2el": e2el}[name] / 1e6 <= limit
        metrics["request_goodput"] = per_s(int(good.sum()), duration_ns)
    else:
        metrics["request_goodput"] = None
    return metrics


def num_stages(result: Result) -> int:
    method = result.scenario.method
    return len(method.stage_layers) if method.stage_layers else method.num_stages


def bubble_fraction(result: Result) -> float | None:
    """1 - mean busy fraction of the pipeline stages over decode time (None without busy data)."""
    busy = dict(result.resource_busy_ns) if result.resource_busy_ns else _busy_from_intervals(result)
    if not busy:
        return None
    stages = num_stages(result)
    duration_ns = decode_ns(result)
    mean_busy = sum(busy.get(f"stage{s}", 0) for s in range(stages)) / (stages * duration_ns)
    return 1.0 - mean_busy


def stage_busy_fractions(result: Result) -> dict[str, float]:
    """Busy fraction of every resource over decode time."""
    busy = dict(result.resource_busy_ns) if result.resource_busy_ns else _busy_from_intervals(result)
    duration_ns = decode_ns(result)
    return {resource: busy[resource] / duration_ns for resource in sorted(busy)}


def _busy_from_intervals(result: Result) -> dict[str, int]:
    busy: dict[str, int] = defaultdict(int)
    for interval in result.intervals:
        busy[interval.resource] += interval.end_ns - interval.start_ns
    return dict(busy)


def per_token_rows(result: Result) -> list[dict[str, Any]]:
    """Rows of the per-token CSV: commit time and inter-token latency in µs, iteration, draft origin."""
    rows = []
    previous: dict[int, int] = {}
    starts = result.request_start_ns
    for token in result.tokens:
        last = previous.get(token.request, starts[token.request] if token.request < len(starts) else 0)
        rows.append(
            {
                "request": token.request,
                "index": token.index,
                "time_us": ns_to_us(token.commit_ns),
                "itl_us": ns_to_us(token.commit_ns - last),
                "iteration": token.iteration,
                "from_draft": int(token.from_draft),
            }
        )
        previous[token.request] = token.commit_ns
    return rows


def per_position_acceptance(result: Result, k_max: int | None = None) -> list[float]:
    """vLLM ``acceptance_at_pos``: unconditional r_k = #(verifications accepting >= k) / #verifications."""
    verifications = result.verifications
    if not verifications:
        return []
    longest = k_max or max(v.drafted for v in verifications)
    count = len(verifications)
    return [sum(1 for v in verifications if v.accepted >= k) / count for k in range(1, longest + 1)]


def empirical_acceptance(result: Result) -> AcceptanceSpec:
    """The acceptance a run realised, as a spec: SPD α per state; chains r_k from conditional estimates.

    Feeding it to ``spdsim.engine.closed_form.predict`` separates timing error from acceptance sampling noise.
    """
    verifications = result.verifications
    if get_method(result.scenario.method.name).pipeline:
        by_state = {"saturated": [0, 0], "refill": [0, 0]}
        for v in verifications:
            by_state[v.state][0] += v.accepted
            by_state[v.state][1] += 1
        total_accepted = by_state["saturated"][0] + by_state["refill"][0]
        total = max(by_state["saturated"][1] + by_state["refill"][1], 1)
        alpha = total_accepted / total
        saturated = by_state["saturated"][0] / by_state["saturated"][1] if by_state["saturated"][1] else alpha
        refill = by_state["refill"][0] / by_state["refill"][1] if by_state["refill"][1] else alpha
        return AcceptanceSpec(kind="spd-state", alpha=alpha, alpha_saturated=saturated, alpha_refill=refill)
    longest = max((v.drafted for v in verifications), default=0)
    rates = []
    survival = 1.0
    for k in range(1, longest + 1):
        at_risk = sum(1 for v in verifications if v.drafted >= k and v.accepted >= k - 1)
        passed = sum(1 for v in verifications if v.drafted >= k and v.accepted >= k)
        survival *= passed / at_risk if at_risk else 0.0
        rates.append(survival)
    if not rates:
        return AcceptanceSpec(kind="iid", alpha=0.0)
    return AcceptanceSpec(kind="positional", rates=tuple(rates))
