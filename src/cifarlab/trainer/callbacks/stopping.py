"""The callbacks that end a run early: StopOnSignal (SIGINT/SIGTERM/SIGUSR1) and EarlyStop (no improvement)."""
from __future__ import annotations

import os
import signal
import sys

from cifarlab.run.metrics import improvement
from cifarlab.trainer.callbacks import Callback
from cifarlab.trainer.outcome import INTERRUPTED

# SIGUSR1 exists on POSIX only; a run on Windows stops on the other two.
STOP_SIGNALS = tuple(sig for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if sig)


class StopOnSignal(Callback):
    """SIGINT/SIGTERM finish the current step; the loop then stops and the checkpointer saves.

    SIGUSR1 does the same: it is the warning a cluster scheduler sends before it preempts or ends a job
    (`sbatch --signal=B:USR1@120`), and the job's script requeues it on exit code 138 (docs/cluster.md).

    A second signal acts as if there were no handler (KeyboardInterrupt, or termination): the atomic
    writes keep the checkpoint files whole even then."""

    def __init__(self, stream=None):
        self.previous = {}
        self.stream = stream or sys.stderr
        self._told = False

    def on_fit_start(self, state):
        def handler(signum, frame):
            if state.stop is not None and state.stop.kind == INTERRUPTED:  # asked twice: stop now
                signal.signal(signum, self.previous.get(signum, signal.SIG_DFL))
                os.kill(os.getpid(), signum)
                return
            state.interrupt(signal.Signals(signum).name, int(signum))

        for sig in STOP_SIGNALS:
            try:
                self.previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handler, no harm
                pass

    def on_step_end(self, state):
        # Printed here, not in the handler: writing to stderr from a signal handler can hit a reentrant write.
        if not self._told and state.stop is not None and state.stop.kind == INTERRUPTED:  # no allocation per step
            self._tell(state)

    def _tell(self, state) -> None:
        self._told = True
        name = state.stop.why.signal or "signal"
        print(f"\n{name} received: finishing step {state.progress.step} and saving a checkpoint (send it again to "
              f"stop at once)", file=self.stream, flush=True)

    def on_fit_end(self, state):
        # A signal that arrived after this callback's on_step_end (in a later callback's) stops the loop
        # before the next step: say so here, so the log always shows which signal stopped the run.
        if not self._told and state.stop is not None and state.stop.kind == INTERRUPTED:
            self._tell(state)
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        self.previous.clear()

    def on_exception(self, state, error):  # a raising callback must not leave our handler installed
        self.on_fit_end(state)


class EarlyStop(Callback):
    """Stop when `state.monitor` has not improved by more than `min_delta` for `patience` epochs."""

    def __init__(self, patience: int, min_delta: float = 0.0):
        self.patience, self.min_delta = patience, min_delta

    def on_epoch_end(self, state):
        monitor = state.monitor
        best_epoch, best = 0, None
        for row in state.progress.history:  # from the history, so a resumed run decides as an uninterrupted one
            if best is None or improvement(monitor, row.value(monitor), best) > self.min_delta:
                best_epoch, best = row.epoch, row.value(monitor)
        if state.progress.epoch - best_epoch >= self.patience:
            state.request_stop(f"no improvement in {monitor} by more than {self.min_delta:g} since epoch "
                               f"{best_epoch}", best_epoch=best_epoch)
