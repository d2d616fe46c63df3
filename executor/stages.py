"""Split a decoder's layers into pipeline stages (even, or an explicit per-stage list)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from spdsim.contract import SpdsimError, uneven_counts  # uneven_counts re-exported for the executor's callers


@dataclass(frozen=True)
class StageSplit:
    """Consecutive layer ranges, one per stage; stage s runs layers ``ranges[s] = (start, end)``."""

    layer_counts: tuple[int, ...]

    @property
    def num_stages(self) -> int:
        return len(self.layer_counts)

    @property
    def num_layers(self) -> int:
        return sum(self.layer_counts)

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        bounds = [0]
        for count in self.layer_counts:
            bounds.append(bounds[-1] + count)
        return tuple(zip(bounds[:-1], bounds[1:], strict=True))

    def stage_of_layer(self, layer: int) -> int:
        for stage, (start, end) in enumerate(self.ranges):
            if start <= layer < end:
                return stage
        raise SpdsimError(f"layer {layer} outside [0, {self.num_layers})")


def split_layers(
    num_layers: int, num_stages: int | None = None, layer_counts: Sequence[int] | None = None
) -> StageSplit:
    """Even split of ``num_layers`` into ``num_stages``, or the explicit ``layer_counts`` (which must sum up)."""
    if layer_counts is not None:
        counts = tuple(int(c) for c in layer_counts)
        if num_stages is not None and num_stages != len(counts):
            raise SpdsimError(f"stages: {num_stages} stages but the per-stage list has {len(counts)} entries")
        if not counts or any(c < 1 for c in counts):
            raise SpdsimError(f"stage_layers: every stage needs >= 1 layer, got {list(counts)}")
        if sum(counts) != num_layers:
            raise SpdsimError(
                f"stage_layers: {list(counts)} sums to {sum(counts)}, the model has {num_layers} layers"
            )
        return StageSplit(counts)
    if num_stages is None or num_stages < 1:
        raise SpdsimError(f"stages: need n >= 1, got {num_stages}")
    if num_stages > num_layers:
        raise SpdsimError(f"stages: n = {num_stages} exceeds the model's {num_layers} layers")
    if num_layers % num_stages:
        raise SpdsimError(
            f"stages: n = {num_stages} does not divide {num_layers} layers; give an explicit per-stage list "
            f"(e.g. --stage-layers {','.join(map(str, uneven_counts(num_layers, num_stages)))})"
        )
    return StageSplit((num_layers // num_stages,) * num_stages)


def parse_stage_layers(text: str) -> tuple[int, ...]:
    """'8,8,7,7' (or '8;8;7;7', the SPD repo's form) -> (8, 8, 7, 7)."""
    parts = [p for p in text.replace(";", ",").split(",") if p.strip()]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise SpdsimError(f"stage_layers: expected comma-separated integers, got '{text}'") from None
