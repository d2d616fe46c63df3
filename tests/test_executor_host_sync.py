"""The counted host read: every decode-loop read of a device tensor goes through `to_host`."""

import threading
import time

import torch

from executor.host_sync import HostSyncs, stall_watchdog, sync_allowed, to_host


def test_to_host_counts_each_read_and_returns_the_values_flat():
    before = HostSyncs.count
    assert to_host(torch.tensor([[1, 2], [3, 4]])) == [1, 2, 3, 4]
    assert to_host(torch.tensor([7]), allowed=False) == [7]
    assert HostSyncs.count == before + 2


def test_sync_allowed_is_a_no_op_without_a_sync_debug_mode():
    with sync_allowed():
        assert torch.tensor([1.5]).tolist() == [1.5]


class _SlowRead:
    """Stands in for a device tensor whose read blocks (a kernel that does not end) for ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def reshape(self, *_shape: int) -> "_SlowRead":
        return self

    def tolist(self) -> list:
        time.sleep(self.seconds)
        return [0]


def test_the_stall_watchdog_reports_a_read_that_waits_past_its_limit_once() -> None:
    reports: list[float] = []
    with stall_watchdog(0.2, reports.append, poll_s=0.02):
        to_host(_SlowRead(0.6))  # type: ignore[arg-type]
    assert len(reports) == 1 and 0.2 < reports[0] < 0.6
    assert HostSyncs.waiting_since is None


def test_the_stall_watchdog_ignores_quick_reads_and_time_between_reads() -> None:
    """Compiles and graph captures happen between reads: however long, they are not a stalled device."""
    reports: list[float] = []
    with stall_watchdog(0.2, reports.append, poll_s=0.02):
        for _ in range(3):
            to_host(_SlowRead(0.05))  # type: ignore[arg-type]
            time.sleep(0.3)
    assert reports == []


def test_a_zero_limit_starts_no_watchdog() -> None:
    threads = threading.active_count()
    with stall_watchdog(0.0, lambda waited: None):
        assert threading.active_count() == threads
