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


@pytest.fixture(autouse=True)
def restore_torch_globals():
    """Tests that train through the CLI set threads (train.threads) and determinism (deterministic=true)
    process-wide: put both back after each test, so no test depends on the order tests run in."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
