"""Shared test settings."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny batches gain nothing from threads, and on a shared 2-core machine OpenMP spinning costs ~5x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
