"""Executor run directories as the simulator sees them (read-only): what was run, on which prompts, how long.

A run directory (``executor/rundir.py``) holds ``config.json``, ``tokens.csv`` (commit time of every token),
``cycles.csv`` (per decode-loop iteration phase times), ``trace.csv`` (accept/reject, the team's TRACE format),
``summary.json`` and, in runs written since it was added, ``timeline.json`` (Chrome trace; nothing here reads
it). Decode time of a prompt runs from its first token (the prefill's) to its last, as the executor reports it;
a prompt's length comes from ``config.json["prompt_tokens"]`` or, failing that, from the position of its first
verified draft.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spdsim.contract.rundir import MEASURED_REQUIRED, require_measured
from spdsim.errors import SpdsimError
from spdsim.scenario.config import PIPELINE_METHODS

RUN_FILES = MEASURED_REQUIRED


@dataclass(frozen=True)
class PromptMeasure:
    prompt_id: str
    prompt_tokens: int
    decode_tokens: int  # tokens after the prefill's first one
    decode_us: float
    cycle_us: tuple[float, ...]  # wall time of every decode-loop iteration
    cycle_states: tuple[str, ...]
    outcomes: tuple[int, ...]  # SPD: accept flag per verification; chains: accepted count; AR: ()
    walls_per_commit: bool = False  # cycle_us holds commit-to-commit gaps (no per-cycle walls were measured)


@dataclass(frozen=True)
class MeasuredRun:
    path: Path
    name: str
    config: dict
    prompts: tuple[PromptMeasure, ...]

    @property
    def method(self) -> str:
        return str(self.config.get("method", ""))

    @property
    def pipeline(self) -> bool:
        return self.method in PIPELINE_METHODS

    @property
    def num_stages(self) -> int:
        return int(self.config.get("stages") or 1)

    @property
    def decode_tokens(self) -> int:
        return sum(p.decode_tokens for p in self.prompts)

    @property
    def decode_us(self) -> float:
        return sum(p.decode_us for p in self.prompts)

    @property
    def tpot_ms(self) -> float:
        return self.decode_us / 1e3 / self.decode_tokens

    @property
    def tokens_per_s(self) -> float:
        return self.decode_tokens / (self.decode_us / 1e6)

    @property
    def cycle_us(self) -> np.ndarray:
        return np.array([c for p in self.prompts for c in p.cycle_us], dtype=np.float64)


def _read_csv(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path)
    except Exception as exc:  # a malformed file is a user problem: one line
        raise SpdsimError(f"run '{path.parent}': cannot read {path.name} ({type(exc).__name__})") from None


def load_run(path: str | Path) -> MeasuredRun:
    """Read and check one executor run directory."""
    path = require_measured(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise SpdsimError(f"run '{path}': config.json is not valid JSON ({exc.msg})") from None
    if not isinstance(config, dict) or "method" not in config:
        raise SpdsimError(f"run '{path}': config.json has no 'method'")
    tokens = _read_csv(path / "tokens.csv")
    cycles = _read_csv(path / "cycles.csv")
    for frame, name, needed in (
        (tokens, "tokens.csv", ("prompt_id", "index", "commit_time_us", "iteration")),
        (cycles, "cycles.csv", ("prompt_id", "cycle", "state", "tokens")),
    ):
        missing = [c for c in needed if c not in frame.columns]
        if missing or frame.empty:
            raise SpdsimError(f"run '{path}': {name} lacks columns {missing} or rows")
    trace = None
    if (path / "trace.csv").is_file() and (path / "trace.csv").stat().st_size > 0:
        trace = _read_csv(path / "trace.csv")
        if trace.empty:
            trace = None
    lengths = dict(config.get("prompt_tokens") or {})
    prompts = []
    for prompt_id, rows in tokens.groupby("prompt_id", sort=False):
        prompt_id = str(prompt_id)
        rows = rows.sort_values("index")
        times = rows["commit_time_us"].to_numpy(dtype=np.float64)
        outcomes: tuple[int, ...] = ()
        first_position = None
        if trace is not None:
            mine = trace[trace["prompt_id"].astype(str) == prompt_id].sort_values(
                ["verify_index", "draft_index"]
            )
            if not mine.empty:
                first_position = int(mine["position"].iloc[0])
                groups = mine.groupby("verify_index", sort=True)["accepted"]
                if config["method"] in PIPELINE_METHODS:
                    outcomes = tuple(int(g.iloc[0]) for _, g in groups)
                else:
                    outcomes = tuple(int(np.cumprod(g.to_numpy()).sum()) for _, g in groups)
        if prompt_id in lengths:
            prompt_len = int(lengths[prompt_id])
        elif first_position is not None:
            prompt_len = first_position - 1
        else:
            raise SpdsimError(
                f"run '{path}': prompt '{prompt_id}' has no length (config.json 'prompt_tokens' or a trace needed)"
            )
        mine_cycles = cycles[cycles["prompt_id"].astype(str) == prompt_id].sort_values("cycle")
        walls, per_commit = _cycle_walls(mine_cycles, rows)
        prompts.append(
            PromptMeasure(
                prompt_id,
                prompt_len,
                len(times) - 1,
                float(times[-1] - times[0]),
                walls,
                tuple(str(s) for s in mine_cycles["state"]),
                outcomes,
                per_commit,
            )
        )
    return MeasuredRun(path, path.name, config, tuple(prompts))


def _cycle_walls(cycles, tokens) -> tuple[tuple[float, ...], bool]:
    """(Wall time per iteration, whether those are commit gaps): ``cycle_us`` where the executor measured it, else
    the gaps between the iterations that committed (a pipeline's fill/refill cycles fold into the next commit)."""
    if "cycle_us" in cycles.columns and cycles["cycle_us"].notna().all():
        return tuple(float(v) for v in cycles["cycle_us"]), False
    if "step_us" in cycles.columns and cycles["step_us"].notna().all():
        return tuple(float(v) for v in cycles["step_us"]), False
    decode = tokens[tokens["iteration"] >= 0]
    ends = decode.groupby("iteration")["commit_time_us"].max().sort_index().to_numpy(dtype=np.float64)
    first = float(tokens["commit_time_us"].iloc[0])
    return tuple(np.diff(np.concatenate(([first], ends))).tolist()), True
