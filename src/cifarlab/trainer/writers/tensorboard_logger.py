"""TensorBoard: a run's metrics, config and final scores as TensorBoard events."""
from __future__ import annotations

import re
import time
from pathlib import Path

from cifarlab.messages import warn
from cifarlab.run.metrics import SCORES, TRACKED, lower_is_better, tracked_values
from cifarlab.trainer.callbacks import Callback


class TensorBoard(Callback):
    """Every tracked metric of run/metrics.EpochRow as `step/<name>` (logging windows) and `epoch/<name>`
    (epochs), against the optimizer step; and, when the run finishes, its flat config and final metrics
    in the HPARAMS tab, in the same run (so TensorBoard lists each run once)."""

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.writer = None

    def on_fit_start(self, state):
        from torch.utils.tensorboard import SummaryWriter

        wait_for_a_later_event_file_name(self.log_dir)
        # On resume, drop the events logged after the checkpoint (steps > state.progress.step): they come again.
        step = state.progress.step
        self.writer = SummaryWriter(str(self.log_dir), purge_step=step + 1 if step else None)

    def on_window(self, state):
        for tag, value in tracked_values(state.process.window).items():
            self.writer.add_scalar(tag, value, state.process.window.step)

    def on_epoch_end(self, state):
        # Against the optimizer step, like the step scalars, so that purge_step on resume drops exactly
        # the events logged after the checkpoint.
        row = state.progress.history[-1]
        for tag, value in tracked_values(row).items():
            self.writer.add_scalar(tag, value, row.step)
        self.writer.flush()

    def on_fit_end(self, state):
        if self.writer is None:
            return
        if state.status == "completed" and state.progress.history:
            self._hparams(state)
        self.writer.close()
        self.writer = None

    def on_exception(self, state, error):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _hparams(self, state) -> None:
        """The flat config and the final metrics (`hparam/final_<metric>`, `hparam/best_<metric>` for the
        accuracies) in TensorBoard's HPARAMS tab, written into this run; an extended run adds newer ones."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        from cifarlab.config_diff import flatten, scalar

        config = {key: scalar(value) for key, value in flatten(state.cfg.to_dict()).items() if key != "description"}
        last, best = state.progress.history[-1], state.best()
        scores = [name for name in SCORES if name in TRACKED]
        metrics = {f"hparam/final_{name}": last.value(name) for name in scores if last.value(name) is not None}
        metrics.update({f"hparam/best_{name}": best.value(name) for name in scores
                        if not lower_is_better(name) and not name.startswith("train") and best.value(name) is not None})
        file_writer = self.writer._get_file_writer()  # add_hparams would make a second run (tb/<name>)
        for summary in hparams_summaries(config, metrics):
            file_writer.add_summary(summary, state.progress.step)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, state.progress.step)


EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d{10})\.")
MAX_WAIT_SECONDS = 2.0


def wait_for_a_later_event_file_name(log_dir: Path) -> None:
    """Wait, if needed, until a new event file's name sorts after every one already in `log_dir`.

    TensorBoard reads a folder's event files in name order (and, live, skips a new file that sorts before
    the one it is reading), and purges the steps a resume repeats only when the resumed file comes later.
    A name is `events.out.tfevents.<second>.<host>.<pid>.<n>`, with n counting writers in the process: in
    the same second, pid 999 sorts after pid 1000 and writer 9 after writer 10, so a resume within the
    second of the earlier file (a notebook, a sweep's quick retry) could be read first. A later second
    always sorts after; the wait is under a second. An earlier file from a clock far ahead (another
    machine on a shared folder) is not waited for: one line says TensorBoard may order it wrongly."""
    seconds = [int(m.group(1)) for path in (log_dir.iterdir() if log_dir.is_dir() else ())
               if (m := EVENT_FILE.match(path.name))]
    newest = max(seconds, default=None)
    if newest is None or newest < int(time.time()):
        return
    if newest + 1 - time.time() > MAX_WAIT_SECONDS:
        warn(f"warning: {log_dir} holds an event file from {newest - int(time.time())} s in the future (a clock "
             f"ahead of this one); TensorBoard may show this run's new events before the earlier ones")
        return
    while int(time.time()) <= newest:
        time.sleep(newest + 1 - time.time() + 0.01)
