"""Schedules, one module per family; ``METHODS`` maps a method name to its description, GPU count and schedule.

Each schedule is ``run_request(env, context, request, streams)``: a SimPy process generator that decodes one
request's ``workload.new_tokens`` tokens, yields one timeout per iteration and records commits, verifications
and resource busy spans in ``context.recorder``. Cost builders shared with the closed forms live beside them.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from spdsim.errors import SpdsimError
from spdsim.scenario.config import Scenario


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    family: str  # "ar" | "chain" | "adaptive" | "parallel" | "pipeline"
    gpus: Callable[[Scenario], int]
    run_request: Callable[..., Generator[Any, Any, None]]
    # several requests decoded together (workload.max_batch > 1): serve_batch(env, context, state, streams,
    # count, context_for), a SimPy process generator that takes requests from ``state.queue``; None: unbatched only
    serve_batch: Callable[..., Generator[Any, Any, None]] | None = None

    @property
    def pipeline(self) -> bool:
        """SPD-style pipelines: one token per verification, tokens per cycle ρ."""
        return self.family == "pipeline"


def _registry() -> dict[str, Method]:
    from spdsim.methods import adaptive, ar, chain, parallel, pipeline

    methods = (ar.METHOD, *chain.METHODS, *adaptive.METHODS, *parallel.METHODS, *pipeline.METHODS)
    return {method.name: method for method in methods}


METHODS: dict[str, Method] = _registry()


def get_method(name: str) -> Method:
    """The registered method ``name``; unknown names raise a one-line SpdsimError listing the allowed ones."""
    method = METHODS.get(name)
    if method is None:
        raise SpdsimError(f"method.name: unknown '{name}' (allowed: {', '.join(METHODS)})")
    return method


def catalog() -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """(headers, rows) of the registered methods, for `spdsim list methods`."""
    return ("method", "family", "description"), [(m.name, m.family, m.description) for m in METHODS.values()]
