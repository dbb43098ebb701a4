"""What the cluster tests share: a small DDP-able smoke run, launching it (torchrun or plain), and comparing
two finished runs (weights bit for bit, metrics row for row)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch  # noqa: F401
from _compare import assert_same_checkpoint

from cifarlab.run.checkpoint import load_checkpoint
from cifarlab.run.metrics import read_metrics

SRC = Path(__file__).resolve().parents[1] / "src"
# Two epochs of 64 steps (global batch 32) on 2,048 8x8 synthetic images: a second or two of training, so a
# launch costs mostly its start, and a kill after the first checkpoint still lands mid-run on a fast machine.
# fp32 and one thread per process in every run, so that runs with the same world size compute the same sums
# in the same order and can be compared bit for bit.
SMALL = ["data.options={num_train: 2048, num_test: 256, image_size: 8}", "train.epochs=2", "train.batch_size=32",
         "train.precision=fp32", "train.threads=1", "output.tensorboard=false", "output.progress=lines",
         "output.report=false"]


def env(**extra: str) -> dict:
    """The test's environment for a launched process: this checkout's cifarlab, no launch variables of ours
    (but `extra`)."""
    variables = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
                     OMP_NUM_THREADS="1", PATH=os.pathsep.join([str(Path(sys.executable).parent),
                                                                os.environ.get("PATH", "")]))
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        variables.pop(name, None)
    # torchrun's restarts need it (docs/cluster.md): with the store shared between rounds, a restarted gloo
    # group can read a dead worker's address and fail to connect (pytorch/pytorch#135712; 2 restarts in 6 here).
    variables["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    return {**variables, **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher]


def cifarlab(*args: str) -> list[str]:
    return ["-m", "cifarlab", *args]


def start(command: list[str], cwd: Path, **extra_env: str) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=cwd, env=env(**extra_env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(process: subprocess.Popen, timeout: float = 120) -> str:
    """The process's output once it exits 0 (an AssertionError with its output otherwise)."""
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"{' '.join(process.args)} exited {process.returncode}:\n{output[-4000:]}"
    return output


def assert_same_run(run: Path, reference: Path) -> None:
    """`run` ended where `reference` did: the same weights bit for bit, the same metrics in every epoch row
    (a DDP run resumed mid-epoch included: its training loss and accuracy of that epoch are exact too)."""
    ours, theirs = (load_checkpoint(path / "checkpoints" / "last.pt") for path in (run, reference))
    assert (ours["epoch"], ours["step"], ours["status"]) == (theirs["epoch"], theirs["step"], "completed")
    assert_same_checkpoint(ours, theirs, ["model"], where="last.pt of the uninterrupted run")
    timing = {"elapsed_seconds": None, "images_per_second": None, "mfu": None}
    rows = [[replace(row, **timing) for row in read_metrics(path, kind="epoch")] for path in (run, reference)]
    assert len(rows[0]) == len(rows[1]) == ours["epoch"]
    for row, expected in zip(*rows):
        assert row == expected
    summaries = [json.loads((path / "summary.json").read_text()) for path in (run, reference)]
    for key in ("final_test_acc", "final_test_loss", "best_test_acc", "epochs_completed", "status"):
        assert summaries[0][key] == summaries[1][key], key
