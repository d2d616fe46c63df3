"""Realised acceptance of a measured run, from its per-verification trace: what the executor achieved, reported
beside what was asked (a synthetic run's nominal α), overall, per cycle state and per chain position.

A row is *checked* when its draft was actually compared with the target: the first draft of a verification, or a
later one whose predecessor was accepted (chain rows after a rejection are logged but never checked). Realised α is
accepted / checked, the conditional per-draft rate that a nominal i.i.d. α stands for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# |realised − nominal| above this is worth a warning: the run did not measure the α it was asked for.
REALISED_TOLERANCE = 0.02


def _rate(accepted: int, checked: int) -> dict[str, Any]:
    return {"alpha": accepted / checked if checked else None, "checked": checked}


def realised_acceptance(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """{"alpha", "checked", "by_state": {state: {...}}, "by_position": {draft_index: {...}}} of trace rows."""
    totals = [0, 0]
    by_state: dict[str, list[int]] = {}
    by_position: dict[int, list[int]] = {}
    previous_accepted: dict[tuple[str, int], bool] = {}
    ordered = sorted(rows, key=lambda r: (str(r["prompt_id"]), int(r["verify_index"]), int(r["draft_index"])))
    for row in ordered:
        key = (str(row["prompt_id"]), int(row["verify_index"]))
        index = int(row["draft_index"])
        checked = index <= 1 or previous_accepted.get(key, False)
        accepted = bool(int(row["accepted"]))
        previous_accepted[key] = checked and accepted
        if not checked:
            continue
        for bucket in (
            totals,
            by_state.setdefault(str(row["state"]), [0, 0]),
            by_position.setdefault(index, [0, 0]),
        ):
            bucket[0] += int(accepted)
            bucket[1] += 1
    return {
        **_rate(*totals),
        "by_state": {state: _rate(*counts) for state, counts in sorted(by_state.items())},
        "by_position": {str(index): _rate(*counts) for index, counts in sorted(by_position.items())},
    }


def realised_warning(nominal: float | None, realised: dict[str, Any], run: str) -> str | None:
    """One line when a synthetic run realised an α other than the one it asked for, else None."""
    alpha = realised.get("alpha")
    if nominal is None or alpha is None or abs(alpha - nominal) <= REALISED_TOLERANCE:
        return None
    return (
        f"warning: {run}: realised acceptance {alpha:.3f} differs from the nominal {nominal:.3f} by more than "
        f"{REALISED_TOLERANCE} ({realised['checked']} checked drafts); the replay uses the realised trace"
    )
