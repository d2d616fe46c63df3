"""What the head training and evaluation tests share: their tiny tensors run on one intra-op thread."""

import pytest
import torch


def one_thread_fixture():
    """A module-scoped autouse fixture: the module's tests run on one intra-op thread, restored afterwards.

    Tiny tensors gain nothing from OpenMP threads, which oversubscribe the shared 2-core CI machine. Assign the
    result to a module-level name of the test module so that pytest collects it there.
    """

    @pytest.fixture(scope="module", autouse=True)
    def one_thread():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)

    return one_thread
