"""The counted host read: every decode-loop read of a device tensor goes through `to_host`."""

import torch

from executor.host_sync import HostSyncs, sync_allowed, to_host


def test_to_host_counts_each_read_and_returns_the_values_flat():
    before = HostSyncs.count
    assert to_host(torch.tensor([[1, 2], [3, 4]])) == [1, 2, 3, 4]
    assert to_host(torch.tensor([7]), allowed=False) == [7]
    assert HostSyncs.count == before + 2


def test_sync_allowed_is_a_no_op_without_a_sync_debug_mode():
    with sync_allowed():
        assert torch.tensor([1.5]).tolist() == [1.5]
