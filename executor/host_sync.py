"""The decode loop's device-to-host reads, counted: the schedules and the distributed link read through here, so
tests can hold a schedule to its budget (at most one read per saturated cycle, none in fill/refill).

A read is also where the host waits for the device: ``stall_watchdog`` turns a read that never returns (a kernel
that does not end; studies/qwen35_h200/README.md, session 10) into a report instead of a silent hang."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch


class HostSyncs:
    """Device-to-host reads of the decode loop (tests check: at most one per cycle, none in fill/refill), and
    when the read in progress began (``time.monotonic()``; None between reads), for the stall watchdog."""

    count = 0
    waiting_since: float | None = None


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
    HostSyncs.waiting_since = time.monotonic()
    try:
        with sync_allowed() if allowed else nullcontext():
            return tensor.reshape(-1).tolist()
    finally:
        HostSyncs.waiting_since = None


@contextmanager
def stall_watchdog(limit_s: float, on_stall: Callable[[float], None], poll_s: float = 1.0) -> Iterator[None]:
    """While the block runs, a daemon thread calls ``on_stall(waited_s)`` once when one read has waited more than
    ``limit_s`` (compiles and captures happen between reads, so they never count). A blocked CUDA read cannot be
    interrupted from Python: ``on_stall`` reports and ends the process (the CLI's does). ``limit_s <= 0``: off.
    The thread can run meanwhile because ``Tensor.tolist`` releases the GIL while it copies from the device
    (torch/csrc/utils/tensor_list.cpp); it wakes once per ``poll_s``, so it costs a timed decode next to nothing."""
    if limit_s <= 0:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.wait(poll_s):
            since = HostSyncs.waiting_since
            waited = time.monotonic() - since if since is not None else 0.0
            if waited > limit_s:
                on_stall(waited)
                return

    thread = threading.Thread(target=watch, name="spdsim-stall-watchdog", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
