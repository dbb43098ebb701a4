"""One trial's training: each seed an ordinary run directory under the sweep folder, trained with
`experiment.train`, or continued with `experiment.resume` when a killed or stopped worker left a last.pt.

    <sweep>/trials/0007/            the run of trial 7 (one seed)
    <sweep>/trials/0007/seed-1/     with --seeds S, one run per seed

The folder is keyed by the number of the trial that started the run, so a retry of trial 7 (a new
Optuna trial after a kill) trains the same folder on from where it stopped.
"""
from __future__ import annotations

import contextlib
import io
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Iterator, Optional, TextIO

from cifarlab import experiment
from cifarlab.config import Config
from cifarlab.errors import UserError
from cifarlab.run.layout import LAST, checkpoint_path, previous_path
from cifarlab.run.lock import RunLock
from cifarlab.run.metrics import best_row, read_metrics
from cifarlab.run.summary import Summary, read_summary
from cifarlab.trainer.callbacks import Callback

TRIALS = "trials"


@dataclass
class RunOutcome:
    run_dir: Path
    status: str  # completed | pruned | interrupted | diverged
    score: Optional[float]  # the monitor of best.pt
    test_acc: Optional[float]  # test accuracy of best.pt
    seconds: float
    signal_number: Optional[int] = None  # the signal that stopped an interrupted run


@dataclass(frozen=True)
class TrialRecord:
    """What a trial keeps in the study beside its score (Optuna user attributes, the study's file edge):
    how its last run ended, its run folders, the mean test accuracy of their best.pt, the training time,
    and a pruned trial's score (Optuna keeps no value for it)."""
    status: Optional[str] = None  # completed | pruned | interrupted | diverged
    run_dirs: tuple[str, ...] = ()  # relative to the sweep folder
    test_acc: Optional[float] = None
    train_seconds: Optional[float] = None
    score: Optional[float] = None

    @classmethod
    def of(cls, results: list[RunOutcome], sweep_dir: Path) -> "TrialRecord":
        tests = [r.test_acc for r in results if r.test_acc is not None]
        status = results[-1].status
        return cls(status, tuple(str(r.run_dir.relative_to(sweep_dir)) for r in results),
                   mean(tests) if tests else None, round(sum(r.seconds for r in results), 3),
                   results[-1].score if status == "pruned" else None)

    def save(self, trial) -> None:
        for name in ("status", "run_dirs", "test_acc", "train_seconds"):
            trial.set_user_attr(name, list(self.run_dirs) if name == "run_dirs" else getattr(self, name))
        if self.score is not None:
            trial.set_user_attr("score", self.score)

    @classmethod
    def of_trial(cls, trial) -> "TrialRecord":
        """The record a trial (a FrozenTrial) holds; a trial that has none yet (running) has every field empty."""
        attrs = trial.user_attrs
        return cls(attrs.get("status"), tuple(attrs.get("run_dirs") or ()), attrs.get("test_acc"),
                   attrs.get("train_seconds"), attrs.get("score"))


def run_dir_for(sweep_dir: Path, run_number: int, seed_index: int, seeds: int) -> Path:
    trial_dir = Path(sweep_dir) / TRIALS / f"{run_number:04d}"
    return trial_dir if seeds == 1 else trial_dir / f"seed-{seed_index}"


def train_or_resume(cfg: Config, run_dir: Path, callbacks: list[Callback]) -> Summary:
    """Bring the run at `run_dir` to its end and return its summary: a finished run as it is, a run with
    a checkpoint resumed from it (exact resume), anything else trained from the start. RunBusy (nothing
    touched) while another process trains it."""
    summary = _summary(run_dir)
    if summary.status in ("completed", "diverged"):  # summary.json is written when a run has ended
        return summary
    last = checkpoint_path(run_dir, LAST)
    if last.exists() or previous_path(last).exists():
        return experiment.resume(run_dir, callbacks=callbacks).summary
    if run_dir.exists():  # started but killed before its first checkpoint: nothing worth keeping, unless a
        with RunLock(run_dir).acquire():  # live process trains it still (RunBusy: `study.py` waits for it)
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    return experiment.train(cfg, run_dir=run_dir, callbacks=callbacks).summary


def _summary(run_dir: Path) -> Summary:
    try:
        summary = read_summary(run_dir, required=False)
    except UserError:  # torn by a kill: the checkpoint is the truth, resume rebuilds it
        return Summary()
    return summary if summary is not None else Summary()


def best_score(run_dir: Path, monitor: str) -> Optional[float]:
    """The monitor's value in the epoch best.pt holds (the best one; the first on ties), from metrics.csv."""
    best = best_row(read_metrics(run_dir, kind="epoch"), monitor)
    return best.value(monitor) if best is not None else None


def outcome(run_dir: Path, summary: Summary, monitor: str) -> RunOutcome:
    status = summary.status or "interrupted"
    if status == "completed" and summary.early_stop is not None and summary.early_stop.pruned_by is not None:
        status = "pruned"  # stopped by the pruning callback (sweep/pruning.py)
    return RunOutcome(run_dir, status, best_score(run_dir, monitor), summary.best_test_acc,
                      float(summary.train_seconds or 0.0), summary.signal_number)


class PrefixedLines(io.TextIOBase):
    """A text stream that starts every line it passes on with `prefix` (a progress bar's `\r` redraws too):
    the output of K workers, or of several machines gathered into one log, says which trial each line is."""

    def __init__(self, stream: TextIO, prefix: str):
        self.stream, self.prefix = stream, prefix
        self.at_line_start = True

    def write(self, text: str) -> int:
        pieces = []
        for piece in re.split(r"([\r\n])", text):
            if not piece:
                continue
            if self.at_line_start and piece not in "\r\n":
                pieces.append(self.prefix)
            pieces.append(piece)
            self.at_line_start = piece in "\r\n"
        self.stream.write("".join(pieces))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:  # a bar is drawn where it would be without the prefix
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")


@contextlib.contextmanager
def lines_prefixed(prefix: str) -> Iterator[None]:
    """stdout and stderr of this process, each line starting with `prefix`, inside the block."""
    with contextlib.redirect_stdout(PrefixedLines(sys.stdout, prefix)), \
            contextlib.redirect_stderr(PrefixedLines(sys.stderr, prefix)):
        yield
