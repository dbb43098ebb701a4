"""Shared test settings."""
import os
from pathlib import Path

import pytest
import torch


def _session_folder(tmp_path_factory) -> Path:
    """The test session's temporary folder: above every pytest-xdist worker's own (`<session>/popen-gwN`)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(autouse=True, scope="session")
def one_probe_cache(tmp_path_factory):
    """`precision: auto` is measured once per model and batch shape and cached (trainer/autotune.py): one
    cache folder for the whole session, shared by the xdist workers (its files are written atomically), so
    the suite's hundreds of tiny runs measure each shape once, every worker's runs of a shape train in the
    precision chosen for it, and the user's own cache is never read or filled."""
    previous = os.environ.get("CIFARLAB_CACHE")
    cache = _session_folder(tmp_path_factory) / "precision-cache"
    cache.mkdir(exist_ok=True)
    os.environ["CIFARLAB_CACHE"] = str(cache)
    yield
    if previous is None:
        os.environ.pop("CIFARLAB_CACHE", None)
    else:
        os.environ["CIFARLAB_CACHE"] = previous


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


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory):
    """Runs trained once per test session for every test that starts from them (tests/_runs.py SharedRuns):
    under the folder above the xdist workers' own, so all workers share them; a test gets its own copy."""
    from _runs import SharedRuns

    return SharedRuns(_session_folder(tmp_path_factory) / "shared-runs")
