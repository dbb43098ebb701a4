"""Training loss and accuracy per step, recorded on the device without a host sync and read in bulk.

Each step writes two numbers into its own row of a small device buffer: the batch's mean loss and its
count of correct predictions (argmax, compare, sum, copy: four small kernels, where a per-step running
sum plus a per-step non-finite test took about eighteen). What the host already knows it keeps on the
host: each step's batch size, learning rate and number. At a sync point (`flush`: the logging window,
a checkpoint, the epoch end) the rows come back in one transfer and are folded, row by row, into float64
sums for the epoch and for the logging window; the first step whose loss was not finite is found there.

Folding row by row in step order makes the sums the same wherever the flushes fall, so a run resumed
from a mid-epoch checkpoint reports exactly the numbers of an uninterrupted one. Under DDP each process
sums its own shard: at a checkpoint step every process adds its sums into the epoch's totals so far
(`share_epoch`), which the checkpoint holds; a resumed rank 0 starts from them and the other ranks from
zero, so the epoch end's all-reduce counts each image once, as an uninterrupted run's does (the sums are
of float32 values times batch sizes in float64, exact, so the order they are added in does not matter).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from cifarlab.data.mix import dominant_labels
from cifarlab.run.outcomes import DivergedAt

SUMS = 3  # loss * images, correct predictions, images


class StepMetrics:
    def __init__(self, device: torch.device, capacity: int = 64, reduce=None, main: bool = True):
        self.reduce, self.main = reduce, main  # DDP: all_reduce, and whether this is rank 0 (module docstring)
        self.shared: Optional[list[float]] = None  # every rank's epoch sums added, at this checkpoint step
        self.rows = torch.zeros(max(1, capacity), 2, dtype=torch.float32, device=device)  # loss, correct
        self.pending: list[tuple[int, float, int]] = []  # (images, lr, step) of the rows not yet read
        self.epoch = [0.0] * SUMS
        self.window = [0.0] * SUMS
        self.first_nonfinite: Optional[DivergedAt] = None  # kept for the whole process

    def record(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, lr: float, step: int) -> None:
        """One training step's loss and correct predictions, written on the device; no sync. `labels` may be
        MixUp/CutMix targets (N, classes): a prediction is correct when it is the dominant label."""
        i = len(self.pending)
        if i == len(self.rows):  # more steps between syncs than planned: a bigger buffer, still no sync
            self.rows = torch.cat([self.rows, torch.zeros_like(self.rows)])
        self.rows[i, 0].copy_(loss.detach())
        torch.sum(logits.detach().argmax(dim=1) == dominant_labels(labels), 0, dtype=torch.float32, out=self.rows[i, 1])
        self.pending.append((labels.shape[0], lr, step))

    def flush(self) -> None:
        """Read the recorded rows (one device sync) and fold them into the epoch and window sums."""
        if not self.pending:
            return
        rows = self.rows[:len(self.pending)].tolist()
        for (images, lr, step), (loss, correct) in zip(self.pending, rows):
            if self.first_nonfinite is None and not math.isfinite(loss):
                self.first_nonfinite = DivergedAt(step, lr)
            for sums in (self.epoch, self.window):
                sums[0] += loss * images
                sums[1] += correct
                sums[2] += images
        self.pending.clear()
        self.shared = None  # steps since: the totals shared at the checkpoint are not the epoch's any more

    def share_epoch(self) -> None:
        """Every rank's epoch sums so far, added up, for the checkpoint of this step (a collective: called by
        every rank at the same step); nothing to do in a single process."""
        self.flush()
        if self.reduce is not None:
            totals = torch.tensor(self.epoch, dtype=torch.float64, device=self.rows.device)
            self.reduce(totals)
            self.shared = totals.tolist()

    def read_window(self) -> tuple[float, float]:
        """(mean loss, accuracy) of the steps since the last window, which then starts anew."""
        self.flush()
        result = _means(self.window)
        self.window = [0.0] * SUMS
        return result

    def read_epoch(self, reduce=None) -> tuple[float, float]:
        """(mean loss, accuracy) of the epoch so far, which then starts anew; `reduce` sums a float64
        tensor of the sums across processes in place (distributed training)."""
        self.flush()
        sums = self.epoch
        self.shared = None
        if reduce is not None:
            totals = torch.tensor(sums, dtype=torch.float64, device=self.rows.device)
            reduce(totals)
            sums = totals.tolist()
        self.epoch = [0.0] * SUMS
        return _means(sums)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The sums a mid-epoch checkpoint carries (recorded rows folded in first): the epoch's of every rank
        when shared at this step, else this process's (a DDP run interrupted between checkpoint steps)."""
        self.flush()
        epoch = self.shared if self.shared is not None else self.epoch
        return {"epoch_meter": torch.tensor(epoch, dtype=torch.float64),
                "window_meter": torch.tensor(self.window, dtype=torch.float64)}

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        self.pending.clear()
        self.shared = None
        self.epoch, self.window = ([0.0] * SUMS if payload.get(key) is None else payload[key].tolist()
                                   for key in ("epoch_meter", "window_meter"))
        if not self.main:  # rank 0 carries the epoch's totals so far; the all-reduce at its end adds ours
            self.epoch = [0.0] * SUMS


def _means(sums: list[float]) -> tuple[float, float]:
    loss_sum, correct, images = sums
    return (loss_sum / images, correct / images) if images else (float("nan"), float("nan"))
