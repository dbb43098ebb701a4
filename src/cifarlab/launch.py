"""torchrun's environment (rank, world size), read without importing torch.

Apart from `runtime.py` because commands that never touch a tensor (`cifarlab recipes`, `show`, a config
error) still ask whether they are rank 0 before they print, and importing torch costs them seconds."""
from __future__ import annotations

import os
import sys

from cifarlab.errors import UserError


def whole_env(name: str, default: str) -> int:
    text = os.environ.get(name, "").strip() or default
    if not (text.isascii() and text.isdigit()):
        raise UserError(f"environment variable {name} must be a whole number >= 0 (torchrun sets it), got {text!r}; "
                        f"unset it to train in one process")
    return int(text)


def launch_ranks() -> tuple[int, int]:
    """(rank, world_size) of this process from torchrun's variables, checked: whole numbers, RANK below
    WORLD_SIZE, and a rendezvous (MASTER_ADDR/MASTER_PORT) when WORLD_SIZE > 1, since without a launcher
    the process would wait for peers that never come. With WORLD_SIZE unset or 1 a stray RANK means
    nothing and is ignored: every process that is not part of a launch is rank 0 (it takes the run lock
    and prints its errors)."""
    world_size = whole_env("WORLD_SIZE", "1")
    if world_size <= 1:
        return 0, 1
    rank = whole_env("RANK", "0")
    if rank >= world_size:
        raise UserError(f"environment variable RANK={rank} must be below WORLD_SIZE={world_size}")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise UserError(f"WORLD_SIZE={world_size} is set but {' and '.join(missing)} are not: start distributed "
                        f"runs with torchrun, or unset WORLD_SIZE to train in one process")
    return rank, world_size


def is_rank_zero() -> bool:
    """False only on a rank other than 0 of a real distributed launch (for messages and the run lock)."""
    try:
        return launch_ranks()[0] == 0
    except UserError:  # the error itself is reported by make_runtime, by rank 0 as every process thinks
        return True


_joined_group = False


def joined_process_group() -> None:
    """Called by `runtime.init_distributed` once this process is in a torch.distributed group."""
    global _joined_group
    _joined_group = True


def exit_code(code: int) -> int:
    """`code`, for a command whose process never joined a group; a process that did ends here, without the
    interpreter's shutdown. Why: a DistributedDataParallel wrapper keeps its gloo group alive in C++ after
    `destroy_process_group()` and after the wrapper is freed (its worker threads still run: 4 threads after
    destroying, 1 without DDP; torch 2.13), and tearing that down during interpreter finalization aborted
    2 of 46 finished two-process CPU runs (`terminate called without an active exception`, SIGABRT), so
    torchrun failed jobs whose every file was written. The run's files are closed by then (checkpoints,
    summary.json, TensorBoard's writer, the trackers' runs); only the streams are left to flush."""
    if not _joined_group:
        return code
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to say there
            pass
    os._exit(code)
