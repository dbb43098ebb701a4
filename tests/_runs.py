"""Run directories several test files start from."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from cifarlab.cli import main
from cifarlab.training.checkpoint import load_checkpoint

FAST = ["train.threads=1", "output.tensorboard=false", "output.progress=none"]


def finished_and_open_runs(root: Path) -> dict[str, Path]:
    """{"done": a finished 1-epoch smoke run, "open": a 2-epoch one put back to its step-15 checkpoint
    (epoch 1, batch 7: resumable)} under `root`."""
    threads = torch.get_num_threads()
    assert main(["train", "smoke", f"output.dir={root / 'done'}", "train.epochs=1", "schedule.peak_epoch=0.5",
                 *FAST]) == 0
    assert main(["train", "smoke", f"output.dir={root / 'open'}", "checkpoint.every_steps=3", *FAST]) == 0
    done = next((root / "done" / "smoke").iterdir())
    stopped = next((root / "open" / "smoke").iterdir())
    os.replace(stopped / "checkpoints" / "last.prev.pt", stopped / "checkpoints" / "last.pt")
    payload = load_checkpoint(stopped / "checkpoints" / "last.pt")
    assert (payload["step"], payload["epoch"], payload["batch_in_epoch"]) == (15, 1, 7)
    torch.set_num_threads(threads)
    return {"done": done, "open": stopped}
