"""Closed forms of every method: expected tokens per iteration, iteration time and tokens/s.

They price iterations with the same cost builders as the schedules (``spdsim.methods.*``) and take expectations
over the acceptance model instead of sampling it, so they are fast (sweeps) and independent of the event loop
(tests compare the two). Jitter: sums of jittered phases keep their mean, so only the pipelines change — a
cycle waits for its slowest member, whose expectation is integrated numerically (``expected_max_ns``).

* ar: 1 token per T_t(1).
* chains (F1, F2): τ(K) = 1 + Σ_{k<=K} r_k per K·T_d + T_t(K+1) (+ control, sampling, fixed).
* parallel drafting (F3): τ(K) per T_dpar(K) + T_t(K+1).
* specdecpp (F7): stop-length distribution P(K = k) of the noisy head (first passage of the log-product walk, on a grid),
  E[τ(K)] / E[T(K)] (renewal-reward).
* cascade: outer as specdecpp; the inner loop's time to make K draft tokens is E[T_inner] · Σ_{m<K} u(m), with
  u the renewal probabilities of the inner tokens-per-iteration distribution (Wald).
* spd / ppsd: per request, n-1 fill cycles + N saturated cycles + n-1 refill cycles per rejection among the
  first N-1 verifications; rejections from the two-state (saturated/refill) acceptance chain. Asymptotically
  ρ = 1 / (1 + (n-1)(1-α)) and S = n·ρ in the ideal case (docs/spd.md §4.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from statistics import NormalDist

import numpy as np

from spdsim.formulas import (  # noqa: F401
    chain_acceptance_length,
    chain_speedup,
    optimal_gamma,
    spd_rho,
    spd_speedup,
)
from spdsim.latency.build import build_latency_model
from spdsim.latency.model import LatencyModel
from spdsim.methods import get_method
from spdsim.methods.ar import ar_step_costs
from spdsim.methods.chain import chain_draft_pass_ns
from spdsim.methods.common import VerifyTable, kv_lengths, serial_overheads_ns, target_layers
from spdsim.methods.parallel import parallel_pass_ns
from spdsim.methods.pipeline import member_parts_ns, pipeline_costs
from spdsim.scenario.acceptance import AcceptanceModel, build_acceptance_model, logit
from spdsim.scenario.config import AcceptanceSpec, Scenario
from spdsim.units import NS_PER_S


@dataclass(frozen=True)
class Prediction:
    """Closed-form steady-state figures of one scenario (floats are fine here: no clock)."""

    method: str
    gpus: int
    tokens_per_iteration: float  # τ for chains, ρ for pipelines, 1 for AR
    iteration_ns: float  # mean iteration / cycle time
    tokens_per_s: float
    acceptance_length: float  # vLLM: bonus included; pipelines: tokens per verification (1)
    rho: float | None = None  # pipelines: tokens per cycle
    n_rho: float | None = None  # pipelines: equivalent acceptance length n·ρ
    speedup: float | None = None  # vs AR on one GPU with the same latency model


def predict(scenario: Scenario, *, realized: AcceptanceSpec | None = None) -> Prediction:
    """The closed form of ``scenario.method.name``.

    ``realized``: acceptance outcomes as a run realised them (``spdsim.engine.metrics.empirical_acceptance``); the
    verification outcomes then follow it while policies (the SpecDec++ head's p̂) keep the scenario's model.
    This separates timing error from acceptance sampling noise (tests, validation).
    """
    method = get_method(scenario.method.name)
    latency = build_latency_model(scenario)
    acceptance = _expected_acceptance(build_acceptance_model(scenario.acceptance))
    outcomes = acceptance if realized is None else _expected_acceptance(build_acceptance_model(realized))
    family = method.family
    name = scenario.method.name
    if family == "ar":
        figures = _ar(scenario, latency)
    elif family == "pipeline":
        figures = _pipeline(scenario, latency, outcomes)
    elif name == "specdecpp":
        figures = _specdecpp(scenario, latency, acceptance, outcomes)
    elif name == "cascade":
        figures = _cascade(scenario, latency, acceptance, outcomes)
    else:
        figures = _fixed_chain(scenario, latency, outcomes, family == "parallel")
    tokens_per_iteration, iteration_ns, acceptance_length, rho, n_rho = figures
    tokens_per_s = tokens_per_iteration * NS_PER_S / iteration_ns
    ar_scenario = replace(scenario, method=replace(scenario.method, name="ar", tensor_parallel=1))
    ar_tokens_per_s = NS_PER_S / _ar(ar_scenario, latency)[1]
    return Prediction(
        method=name,
        gpus=method.gpus(scenario),
        tokens_per_iteration=tokens_per_iteration,
        iteration_ns=iteration_ns,
        tokens_per_s=tokens_per_s,
        acceptance_length=acceptance_length,
        rho=rho,
        n_rho=n_rho,
        speedup=tokens_per_s / ar_tokens_per_s,
    )


def stop_length_distribution(
    conditional: list[float],
    sigma: float,
    h: float,
    k_min: int,
    k_max: int,
    grid_points: int = 2000,
    quantiles: int = 256,
) -> np.ndarray:
    """P(K = k), k = 0..k_max, of the SpecDec++ rule with p̂_k = sigmoid(logit(a_k) + N(0, σ)).

    The log of Π p̂ is a decreasing random walk; K is its first passage below log(1 - h) at or after k_min
    (capped at k_max). The walk's density is propagated on a grid with Gauss-Hermite increments.
    """
    result = np.zeros(k_max + 1)
    if h < 0:
        result[min(k_min, k_max)] = 1.0
        return result
    if h >= 1:
        result[k_max] = 1.0
        return result
    threshold = math.log1p(-h)
    if sigma <= 0:
        log_cumulative = 0.0
        for k in range(2, k_max + 1):
            log_cumulative += math.log(min(max(conditional[k - 1], 1e-300), 1.0))
            if k >= k_min and log_cumulative < threshold:
                result[k] = 1.0
                return result
        result[k_max] = 1.0
        return result
    # equal-probability normal quantiles: the stop probability is a CDF, which Gauss-Hermite nodes resolve badly
    nodes = np.array([NormalDist().inv_cdf((j + 0.5) / quantiles) for j in range(quantiles)])
    grid = np.linspace(threshold, 0.0, grid_points)
    step = grid[1] - grid[0]
    mass = np.zeros(grid_points)
    mass[-1] = 1.0
    absorbed = 0.0
    for k in range(2, k_max + 1):
        increments = -np.logaddexp(0.0, -(logit(conditional[k - 1]) + sigma * nodes))  # log sigmoid
        position = (grid[None, :] - threshold + increments[:, None]) / step
        share = np.broadcast_to(mass / quantiles, position.shape)
        below = position < 0
        absorbed += float(share[below].sum())
        keep = ~below
        lower = np.floor(position[keep]).astype(np.int64)
        fraction = position[keep] - lower
        kept = share[keep]
        mass = np.bincount(lower, kept * (1.0 - fraction), minlength=grid_points)  # type: ignore[assignment]
        mass += np.bincount(np.minimum(lower + 1, grid_points - 1), kept * fraction, minlength=grid_points)
        if k >= k_min:
            result[k] = absorbed
            absorbed = 0.0
    result[k_max] += mass.sum() + absorbed
    return result / result.sum()


# --- per family -----------------------------------------------------------------------------------------------
def _ar(scenario, latency):
    step_ns, control_ns, serial_ns = ar_step_costs(scenario, latency)
    iteration = control_ns + float(np.mean(step_ns[: scenario.workload.new_tokens])) + serial_ns
    return 1.0, iteration, 1.0, None, None


def _mean_cost(values, scenario) -> float:
    return float(np.mean(np.asarray(values[: scenario.workload.new_tokens], dtype=np.float64)))


def _tau(survival: np.ndarray, drafted: int) -> float:
    return 1.0 + float(np.sum(survival[:drafted]))


def _fixed_chain(scenario, latency, acceptance, parallel):
    drafted = scenario.method.draft_tokens
    if parallel:
        draft = _mean_cost(parallel_pass_ns(scenario, latency), scenario)
    else:
        draft = drafted * _mean_cost(chain_draft_pass_ns(scenario, latency), scenario)
    control_ns, serial_ns = serial_overheads_ns(scenario, latency, with_verify=True)
    verify = _mean_cost(VerifyTable(scenario, latency)(drafted + 1), scenario)
    tau = _tau(acceptance.survival(max(drafted, 1)), drafted)
    return tau, control_ns + draft + verify + serial_ns, tau, None, None


def _adaptive_setup(scenario, acceptance):
    method = scenario.method
    k_max = max(method.k_max, 1)
    k_min = min(max(method.k_min, 1), k_max)
    conditional = [acceptance.conditional(k) for k in range(1, k_max + 1)]
    sigma = scenario.acceptance.head_noise
    stop = stop_length_distribution(conditional, sigma, method.stop_threshold, k_min, k_max)
    return k_min, k_max, stop


def _specdecpp(scenario, latency, acceptance, outcomes):
    k_min, k_max, stop = _adaptive_setup(scenario, acceptance)
    survival = outcomes.survival(k_max)
    pass_ns = _mean_cost(chain_draft_pass_ns(scenario, latency), scenario)
    control_ns, serial_ns = serial_overheads_ns(scenario, latency, with_verify=True)
    verify = VerifyTable(scenario, latency)
    tokens = time = 0.0
    for k in range(1, k_max + 1):
        if stop[k] > 0:
            tokens += stop[k] * _tau(survival, k)
            time += stop[k] * (k * pass_ns + _mean_cost(verify(k + 1), scenario))
    time += control_ns + serial_ns
    return tokens, time, tokens, None, None


def _cascade(scenario, latency, acceptance, outcomes):
    k_min, k_max, outer_stop = _adaptive_setup(scenario, acceptance)
    inner_alpha = scenario.acceptance.inner_alpha
    inner_model = AcceptanceModel("iid", inner_alpha, (), inner_alpha, inner_alpha)
    _, _, inner_stop = _adaptive_setup(scenario, inner_model)
    kv = kv_lengths(scenario)
    little = _mean_cost(latency.little_model_ns(scenario.method.draft_layers, 1, kv), scenario)
    middle_layers = scenario.method.cascade_draft_layers(target_layers(scenario))
    # tokens-per-inner-iteration pmf and mean inner iteration time
    tokens_pmf = np.zeros(k_max + 2)
    inner_time = 0.0
    for k in range(1, k_max + 1):
        if inner_stop[k] <= 0:
            continue
        inner_time += inner_stop[k] * (
            k * little + _mean_cost(latency.draft_model_ns(middle_layers, k + 1, kv), scenario)
        )
        for accepted in range(k + 1):
            reach = inner_alpha**accepted
            p = reach * (1.0 - inner_alpha) if accepted < k else reach
            tokens_pmf[accepted + 1] += inner_stop[k] * p
    renewal = np.zeros(k_max + 1)
    renewal[0] = 1.0
    for m in range(1, k_max + 1):
        renewal[m] = sum(tokens_pmf[t] * renewal[m - t] for t in range(1, min(m, k_max + 1) + 1))
    survival = outcomes.survival(k_max)
    control_ns, serial_ns = serial_overheads_ns(scenario, latency, with_verify=True)
    verify = VerifyTable(scenario, latency)
    tokens = time = 0.0
    for k in range(1, k_max + 1):
        if outer_stop[k] <= 0:
            continue
        inner_iterations = float(np.sum(renewal[:k]))
        tokens += outer_stop[k] * _tau(survival, k)
        time += outer_stop[k] * (inner_iterations * inner_time + _mean_cost(verify(k + 1), scenario))
    time += control_ns + serial_ns
    return tokens, time, tokens, None, None


def _pipeline(scenario, latency, acceptance):
    costs = pipeline_costs(scenario, latency)
    stages = costs.num_stages
    new_tokens = scenario.workload.new_tokens
    alpha_saturated, alpha_refill = acceptance.spd_alphas()
    cycles = [np.asarray(c, dtype=np.float64) for c in costs.cycle_ns]
    refill_ns = np.asarray(costs.refill_total_ns, dtype=np.float64)
    cv = scenario.overheads.jitter_cv
    if cv > 0:
        # the cycle waits for its slowest jittered member: scale each cycle's member maximum by E[max] / max
        middle = new_tokens // 2
        serial = costs.control_ns + costs.fixed_ns
        for active in range(1, stages + 1):
            members = member_parts_ns(costs, active, middle)
            inflation = expected_max_ns(members, cv) / max(sum(parts) for parts in members)
            fixed_part = serial + (costs.verify_ns if active == stages else 0)
            cycles[active] = fixed_part + inflation * (cycles[active] - fixed_part)
        refill_ns = sum(cycles[a] for a in range(1, stages)) if stages > 1 else np.zeros(new_tokens + 1)
    # P(verification c follows a fill/refill): p_0 = 1, p_{c+1} = P(reject at c)
    # p_{c+1} = (1 - α_s) + λ p_c with λ = α_s - α_r, so p_c = π + (1 - π) λ^c (π its fixed point)
    decay = alpha_saturated - alpha_refill
    if decay >= 1.0:  # α_s = 1, α_r = 0: every verification follows a refill
        after_refill = np.ones(new_tokens + 1)
    else:
        stationary = (1.0 - alpha_saturated) / (1.0 - decay)
        after_refill = stationary + (1.0 - stationary) * decay ** np.arange(new_tokens + 1, dtype=np.float64)
    rejections = after_refill[1:new_tokens]  # rejections at verifications 0..N-2 trigger refills
    time = (
        refill_ns[0]
        + cycles[stages][:new_tokens].sum()
        + float(np.dot(rejections, refill_ns[1:new_tokens]))
        + costs.reject_ns * float(rejections.sum())
    )
    cycle_count = (stages - 1) + new_tokens + (stages - 1) * float(rejections.sum())
    rho = new_tokens / cycle_count
    return rho, time / cycle_count, 1.0, rho, stages * rho


def expected_max_ns(members: list[tuple[int, ...]], cv: float, grid_points: int = 4000) -> float:
    """E[max_i Σ_j part_ij · X_ij] with X lognormal (mean 1, coefficient of variation ``cv``), independent.

    Each member is approximated by one lognormal with its exact mean and variance (sum of its parts);
    E[max] = ∫ (1 - Π F_i(x)) dx on a grid.
    """
    means = np.array([float(sum(parts)) for parts in members])
    if cv <= 0 or means.max() <= 0:
        return float(means.max())
    spreads = np.array([math.sqrt(sum(p * p for p in parts)) * cv for parts in members])
    active = means > 0
    means, spreads = means[active], spreads[active]
    sigma = np.sqrt(np.log1p((spreads / means) ** 2))
    mu = np.log(means) - 0.5 * sigma**2
    upper = float(np.max(np.exp(mu + 8.0 * sigma)))
    x = np.linspace(upper / grid_points, upper, grid_points)
    z = (np.log(x)[None, :] - mu[:, None]) / np.where(sigma > 0, sigma, 1e-12)[:, None]
    cdf = 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))
    tail = 1.0 - np.prod(cdf, axis=0)
    return float(upper / grid_points + np.trapezoid(tail, x))


def _erf(values: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(values)


def _expected_acceptance(model: AcceptanceModel) -> AcceptanceModel:
    """Trace replay enters the closed forms through its empirical rates (SPD: α; chains: r_k)."""
    if model.trace is None:
        return model
    outcomes = [value for per_prompt in model.trace.outcomes for value in per_prompt]
    if model.trace.kind == "spd":
        alpha = float(np.mean(outcomes))
        return build_acceptance_model(AcceptanceSpec(kind="iid", alpha=alpha))
    counts = np.asarray(outcomes)
    longest = max(int(counts.max()), 1)
    rates = tuple(float(np.mean(counts >= k)) for k in range(1, longest + 1))
    return build_acceptance_model(AcceptanceSpec(kind="positional", rates=rates))


__all__ = [
    "Prediction",
    "predict",
    "spd_rho",
    "spd_speedup",
    "chain_acceptance_length",
    "chain_speedup",
    "optimal_gamma",
    "stop_length_distribution",
    "LatencyModel",
]
