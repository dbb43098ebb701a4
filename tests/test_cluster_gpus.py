"""`cifarlab sweep ... --workers K` on a machine with several GPUs: each worker gets one of the GPUs this
process may use, in turn, as the scheduler listed them (tested without a GPU: the assignment and what each
worker process is started with)."""
import multiprocessing

import pytest

from cifarlab.sweep import workers as sweep_workers
from cifarlab.sweep.workers import worker_gpus


def no_gpu_count() -> int:
    raise AssertionError("CUDA_VISIBLE_DEVICES is set: the devices are its entries, CUDA is not asked")


@pytest.mark.parametrize(("visible", "workers", "expected"), [
    ("2,3", 4, ["2", "3", "2", "3"]),  # a scheduler gave us GPUs 2 and 3: never 0 or 1
    ("GPU-aa,GPU-bb,GPU-cc", 2, ["GPU-aa", "GPU-bb"]),  # UUIDs pass through as written
    ("4, 6", 3, ["4", "6", "4"]),
    ("5", 3, None),  # one GPU: every worker shares it, the variable is left alone
    ("", 2, None),  # no GPU allowed: left alone, so none is used
])
def test_each_worker_gets_one_of_the_visible_gpus_in_turn(visible, workers, expected):
    assert worker_gpus(workers, visible, no_gpu_count) == expected


def test_without_cuda_visible_devices_the_gpus_cuda_reports_are_numbered():
    assert worker_gpus(3, None, lambda: 2) == ["0", "1", "0"]
    assert worker_gpus(2, None, lambda: 0) is None


def test_the_worker_processes_are_started_with_their_gpu(monkeypatch):
    started = []

    class Process:  # stands in for a spawned worker: records the environment it would start with
        def __init__(self, target, args, name):
            started.append(args[1])
            self.exitcode = 0

        def start(self):
            pass

        def join(self):
            pass

    class Context:
        pass

    Context.Process = Process
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    monkeypatch.setattr(multiprocessing, "get_context", lambda method: Context())
    assert sweep_workers._run_workers(sweep=None, workers=3, worker=None) == [0, 0, 0]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in started] == ["1", "3", "1"]
