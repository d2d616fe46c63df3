"""The textbook formulas, each written once (``docs/metrics.md`` gives their sources).

F1 chain acceptance length, F2 Leviathan's speedup and its optimal γ, and the ideal SPD pipeline (ρ, n·ρ), with
the inverses that turn a published figure into an acceptance rate α. The closed forms
(``spdsim.engine.closed_form``), the acceptance presets (``spdsim.contract.presets_file``) and the authors'
metric (``spdsim.report.authors_metric``) all call these.
"""

from __future__ import annotations

from collections.abc import Callable


def spd_rho(alpha: float, num_stages: int) -> float:
    """Tokens per cycle of the ideal SPD pipeline: 1 / (1 + (n-1)(1-α))."""
    return 1.0 / (1.0 + (num_stages - 1) * (1.0 - alpha))


def spd_speedup(alpha: float, num_stages: int) -> float:
    """Ideal SPD speedup n·ρ = n / (1 + (n-1)(1-α)) (zero overheads, balanced stages, drafter hidden)."""
    return num_stages * spd_rho(alpha, num_stages)


def alpha_from_spd_speedup(num_stages: int, speedup: float) -> float:
    """The α whose ideal SPD speedup at n stages is ``speedup`` (the inverse of :func:`spd_speedup`)."""
    return 1.0 - (num_stages / speedup - 1.0) / (num_stages - 1)


def chain_acceptance_length(alpha: float, gamma: int) -> float:
    """τ(γ) = 1 + Σ_k α^k = (1 - α^{γ+1}) / (1 - α), bonus token included (F1, i.i.d.)."""
    if alpha >= 1.0:
        return gamma + 1.0
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def chain_speedup(alpha: float, gamma: int, cost_ratio: float) -> float:
    """Leviathan's S = (1 - α^{γ+1}) / ((1 - α)(γc + 1)) (F2: T_t(γ+1) = T_t(1), no overheads)."""
    return chain_acceptance_length(alpha, gamma) / (gamma * cost_ratio + 1.0)


def optimal_gamma(alpha: float, cost_ratio: float, gamma_max: int = 40) -> tuple[int, float, float]:
    """(γ*, τ(γ*), S(γ*)) maximising F2 over γ = 1..gamma_max."""
    best = max(range(1, gamma_max + 1), key=lambda g: chain_speedup(alpha, g, cost_ratio))
    return best, chain_acceptance_length(alpha, best), chain_speedup(alpha, best, cost_ratio)


def _bisect_increasing(func: Callable[[float], float], target: float) -> float:
    low, high = 0.0, 1.0 - 1e-12
    if target <= func(low):
        return 0.0
    if target >= func(high):
        return 1.0
    for _ in range(80):
        mid = 0.5 * (low + high)
        if func(mid) < target:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def alpha_from_chain_tau(draft_tokens: int, tau: float) -> float:
    """Effective i.i.d. α whose chain acceptance length at K equals a published τ (F8)."""
    return _bisect_increasing(lambda a: chain_acceptance_length(a, draft_tokens), tau)


def alpha_from_sd_speedup(cost_ratio: float, speedup: float, gamma_max: int = 40) -> float:
    """α whose optimal-γ classic-SD speedup at draft/target cost ratio c equals a published speedup."""
    return _bisect_increasing(lambda a: optimal_gamma(a, cost_ratio, gamma_max)[2], speedup)
