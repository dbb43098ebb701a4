"""torchrun's environment (rank, world size), read without importing torch.

Apart from `runtime.py` because commands that never touch a tensor (`cifarlab recipes`, `show`, a config
error) still ask whether they are rank 0 before they print, and importing torch costs them seconds."""
from __future__ import annotations

import os

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
