"""An optional Weights & Biases logger (`output.wandb: true`, needs `pip install cifarlab[wandb]`).

One W&B run per cifarlab run: the resolved config when it starts, the logging windows (`step/train_loss`,
...) and every epoch's row (`epoch/test_acc`, ...: the TensorBoard and MLflow tags) against the optimizer
step, and when the run ends summary.json as the run's summary and the report's plots (`plots/*.png`) as
images; the W&B run then finishes (exit code 0 when the run completed, 1 otherwise). The W&B run id is
kept in `<run_dir>/wandb.json` and W&B's own files go to `<run_dir>/wandb/`, so `cifarlab resume` logs
into the same W&B run, and an offline run (`WANDB_MODE=offline`) is uploaded later with `wandb sync
<run_dir>/wandb/offline-run-*`.

Steps are cifarlab's optimizer steps. W&B keeps steps increasing: after a resume from a checkpoint older
than the last logged row, W&B drops the repeated steps it already has (the first run's values stay).
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Optional

from cifarlab.atomic import atomic_write_text
from cifarlab.errors import UserError
from cifarlab.run.layout import PLOTS, WANDB_RUN
from cifarlab.run.metrics import tracked_values
from cifarlab.run.summary import read_summary
from cifarlab.trainer.callbacks import Callback

DEFAULT_PROJECT = "cifarlab"


def require_wandb() -> None:
    """A UserError now, before a run directory is made, when output.wandb=true cannot be honoured."""
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise UserError("output.wandb=true needs Weights & Biases: pip install 'cifarlab[wandb]' "
                        "(or set output.wandb=false)")


class WandbLogger(Callback):
    def __init__(self, run_dir: Path, project: Optional[str] = None):
        self.run_dir = Path(run_dir)
        self.project = project
        self.run = None

    def on_fit_start(self, state):
        require_wandb()
        import wandb

        saved = self.run_dir / WANDB_RUN
        if saved.is_file():  # resumed: the same W&B run
            record = json.loads(saved.read_text())
        else:  # the id is kept before W&B starts, so a run killed at any point resumes into it
            record = {"run_id": uuid.uuid4().hex[:12], "project": self.project or DEFAULT_PROJECT}
            atomic_write_text(saved, json.dumps(record) + "\n")
        try:
            self.run = wandb.init(
                project=record["project"], id=record["run_id"], resume="allow", dir=str(self.run_dir),
                name=f"{state.cfg.name}/{self.run_dir.name}", group=state.cfg.name,
                # console off: W&B would wrap stdout/stderr, under the progress bar and a caller's redirections.
                settings=wandb.Settings(console="off"))
        except Exception as err:  # not logged in, no network, a bad setting: W&B raises many types
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise UserError(f"Weights & Biases could not start ({reason}); run `wandb login`, or set "
                            f"WANDB_MODE=offline to log locally, or output.wandb=false") from None
        # The config as this process runs it: `resume --epochs N` changes train.epochs of the same run.
        self.run.config.update(state.cfg.to_dict(), allow_val_change=True)

    def on_window(self, state):
        self.run.log(tracked_values(state.process.window), step=state.process.window.step)

    def on_epoch_end(self, state):
        row = state.progress.history[-1]
        self.run.log({**tracked_values(row), "epoch": row.epoch}, step=row.step)

    def on_run_end(self, state):
        if self.run is None:
            return
        import wandb

        try:
            summary = read_summary(self.run_dir, required=False)
            values = summary.to_json() if summary is not None else {}
            self.run.summary.update({key: value for key, value in values.items() if value is not None})
            plots = sorted((self.run_dir / PLOTS).glob("*.png"))
            if plots:
                self.run.log({f"{PLOTS}/{path.stem}": wandb.Image(str(path)) for path in plots},
                             step=state.progress.step)
        finally:
            self.run.finish(exit_code=0 if state.status == "completed" else 1)
            self.run = None
