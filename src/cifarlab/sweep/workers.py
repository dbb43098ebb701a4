"""`run_sweep`: this process works on the study, or K worker processes do (`workers=K`), then the report.

Each worker is an ordinary Optuna worker on the shared storage, so K processes here and the same command
on other machines (`--storage postgresql://...`) all cooperate the same way. On a machine with several
GPUs each local worker sees one of them (CUDA_VISIBLE_DEVICES); on a CPU they split the cores.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from typing import Optional

from cifarlab.errors import UserError
from cifarlab.messages import say, warn
from cifarlab.sweep.claim import worker_identity
from cifarlab.sweep.definition import Sweep

EXIT_STOPPED = 130  # stopped by SIGINT after saving the running trial's checkpoint
# 128 + the signal that stopped the running trial, as `train` exits: SIGINT, SIGTERM, SIGUSR1 (a scheduler's
# warning: a job array's script requeues the task on 138, docs/cluster.md).
STOPPED_CODES = (130, 143, 138)


def run_sweep(sweep: Sweep, workers: int = 1, report: bool = True, worker_id: Optional[str] = None) -> int:
    """Work on the sweep until it has its trials, then write the report; returns the exit code: 0 done,
    128 + the signal's number when stopped by one (run the same command again to continue). `worker_id`
    names this worker, so that a trial it is stopped in waits for it (default: the SLURM job it runs in;
    `sweep/claim.py`)."""
    from cifarlab.sweep.study import SweepStopped, open_study, work

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    worker = worker_identity(worker_id, os.environ)
    _quiet_optuna()  # before the study opens: Optuna logs "Using an existing study" above a refusal's one line
    study = open_study(sweep)  # checks the storage and the definition once, before any worker starts
    if worker is not None:
        say(f"sweep {sweep.name}: worker {worker}" + (f" (processes {worker}.0 to {worker}.{workers - 1})"
                                                      if workers > 1 else ""))
    if workers > 1:
        code = workers_outcome(sweep, study, _run_workers(sweep, workers, worker))
    else:
        try:
            work(sweep, study, worker)
            code = 0
        except SweepStopped as stop:
            code = stop.exit_code
        except KeyboardInterrupt:
            code = EXIT_STOPPED
    if code in STOPPED_CODES:
        say(f"sweep {sweep.name} stopped; the running trial saved its checkpoint. Continue it with the same "
            f"command (its trials so far are in {sweep.sweep_dir})")
    if report and code == 0:
        from cifarlab.sweep.report import write_sweep_report

        path = write_sweep_report(sweep, study)
        say(f"sweep report: {path}")
    return code


def _quiet_optuna() -> None:
    import optuna

    # Optuna's per-trial lines repeat what the runs print, and its warning for a failed trial carries a
    # traceback: a trial that fails for a reason the user must see raises it to the CLI instead, and a
    # stopped or surplus trial is no error.
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def _run_workers(sweep: Sweep, workers: int, worker: Optional[str]) -> list[int]:
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch or DB state
    devices = worker_gpus(workers, os.environ.get("CUDA_VISIBLE_DEVICES"), _gpu_count)
    processes = []
    for index in range(workers):
        env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
        if devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = devices[index]
        name = f"{worker}.{index}" if worker is not None else None  # the same again when the job is requeued
        process = context.Process(target=_worker_main, args=(sweep, env, name), name=f"sweep-worker-{index}")
        process.start()
        processes.append(process)
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:  # the workers got the same SIGINT: let them save and stop
        for process in processes:
            process.join()
    return [process.exitcode for process in processes]


def workers_outcome(sweep: Sweep, study, codes: list[int]) -> int:
    """The sweep's exit code from its workers' (0 done, 128 + signal stopped). A worker that died (killed, out of
    memory) fails the sweep only when the study is not done: the others take over its trial once its
    heartbeat stops, so a study that holds all its trials, none running, is done."""
    from cifarlab.sweep.study import counts

    failed = [code for code in codes if code != 0 and code not in STOPPED_CODES]
    stopped = [code for code in codes if code in STOPPED_CODES]
    if stopped:
        return stopped[0]
    if not failed:
        return 0
    now = counts(study)
    if now.counted >= sweep.trials and not now.running and not now.waiting:
        warn(f"sweep {sweep.name}: a worker ended with exit code {failed[0]} (killed?), and the others finished "
             f"its trials: the study is done")
        return 0
    raise UserError(f"a sweep worker failed (exit codes {codes}) before the study was done; see its message "
                    f"above, and run the same command again to continue")


def _worker_main(sweep: Sweep, env: dict, worker: Optional[str]) -> None:
    os.environ.update({key: value for key, value in env.items() if key not in os.environ
                       or key == "CUDA_VISIBLE_DEVICES"})
    from cifarlab.sweep.study import SweepStopped, open_study, work

    _quiet_optuna()
    try:
        work(sweep, open_study(sweep), worker)
    except SweepStopped as stop:
        raise SystemExit(stop.exit_code)
    except KeyboardInterrupt:
        raise SystemExit(EXIT_STOPPED)
    except UserError as err:
        print(f"cifarlab sweep: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2)


def worker_gpus(workers: int, visible: str | None, gpu_count) -> list[str] | None:
    """The CUDA_VISIBLE_DEVICES of each of `workers` local workers: one GPU each, in turn, from the devices
    this process may use; None (leave it alone) with fewer than two. `visible` is our own
    CUDA_VISIBLE_DEVICES: its entries (indices, or UUIDs such as `GPU-5f3a...`, as a scheduler sets them)
    are handed out as written, since a worker's index 0 would otherwise be the machine's first GPU rather
    than the first one allotted to us. Unset, the `gpu_count()` devices CUDA reports are numbered 0..n-1."""
    if visible is not None:
        devices = [entry.strip() for entry in visible.split(",") if entry.strip()]
    else:
        devices = [str(index) for index in range(gpu_count())]
    if len(devices) < 2:
        return None
    return [devices[index % len(devices)] for index in range(workers)]


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0
