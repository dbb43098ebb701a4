"""TensorBoard: a run's metrics, config and final scores as TensorBoard events."""
from __future__ import annotations

from pathlib import Path

from cifarlab.run.records import TRACKED, tracked_values
from cifarlab.training.callbacks import Callback


class TensorBoard(Callback):
    """Every tracked metric of run/records.EpochRow as `step/<name>` (logging windows) and `epoch/<name>`
    (epochs), against the optimizer step; and, when the run finishes, its flat config and final metrics
    in the HPARAMS tab, in the same run (so TensorBoard lists each run once)."""

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.writer = None

    def on_fit_start(self, state):
        from torch.utils.tensorboard import SummaryWriter

        # On resume, drop the events logged after the checkpoint (steps > state.step): they come again.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=state.step + 1 if state.step else None)

    def on_window(self, state):
        for tag, value in tracked_values("step", state.window).items():
            self.writer.add_scalar(tag, value, state.window["step"])

    def on_epoch_end(self, state):
        # Against the optimizer step, like the step scalars, so that purge_step on resume drops exactly
        # the events logged after the checkpoint.
        row = state.history[-1]
        for tag, value in tracked_values("epoch", row).items():
            self.writer.add_scalar(tag, value, row["step"])
        self.writer.flush()

    def on_fit_end(self, state):
        if self.writer is None:
            return
        if state.status == "completed" and state.history:
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
        last, best = state.history[-1], state.best()
        scores = [name for name in TRACKED if name.split("_")[0] in ("train", "val", "test")]
        metrics = {f"hparam/final_{name}": last[name] for name in scores if name in last}
        metrics.update({f"hparam/best_{name}": best[name] for name in scores
                        if name.endswith("_acc") and not name.startswith("train") and name in best})
        file_writer = self.writer._get_file_writer()  # add_hparams would make a second run (tb/<name>)
        for summary in hparams_summaries(config, metrics):
            file_writer.add_summary(summary, state.step)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, state.step)
