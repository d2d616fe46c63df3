"""The decode loop's device-to-host reads, counted: the schedules and the distributed link read through here, so
tests can hold a schedule to its budget (at most one read per saturated cycle, none in fill/refill)."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch


class HostSyncs:
    """Device-to-host reads of the decode loop (tests check: at most one per cycle, none in fill/refill)."""

    count = 0


@contextmanager
def sync_allowed():
    """Lift `torch.cuda.set_sync_debug_mode("error")` around a deliberate sync (the verify read, a re-anchor)."""
    mode = torch.cuda.get_sync_debug_mode() if torch.cuda.is_available() else 0
    if mode:
        torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        if mode:
            torch.cuda.set_sync_debug_mode(mode)


def to_host(tensor: torch.Tensor, allowed: bool = True) -> list:
    """The counted host sync: a small device tensor as a Python list."""
    HostSyncs.count += 1
    with sync_allowed() if allowed else nullcontext():
        return tensor.reshape(-1).tolist()
