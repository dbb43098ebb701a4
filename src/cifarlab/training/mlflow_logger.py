"""An optional MLflow logger (`output.mlflow: true`, needs `pip install cifarlab[mlflow]`).

One MLflow run per cifarlab run: the flat config as params when it starts, the logging windows
(`step/train_loss`, ...) and every epoch's metrics (`epoch/test_acc`, ...: the TensorBoard tags, from
run/records.EpochRow) against the optimizer step, and at the end the
status (FINISHED, KILLED when interrupted, FAILED when diverged). The MLflow run id is kept in
`<run_dir>/mlflow.json`, so `cifarlab resume` logs into the same MLflow run. The tracking store is
`output.mlflow_uri`, else a local file store in `<run_dir>/mlruns` (no server; `mlflow ui
--backend-store-uri <run_dir>/mlruns` shows it). Params are the config the run started with: MLflow
cannot change a param, so an extension (`resume --epochs`) is recorded as the tag `train.epochs`.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

from cifarlab.atomic import atomic_write_text
from cifarlab.errors import UserError
from cifarlab.run.layout import MLFLOW_RUN, MLFLOW_STORE
from cifarlab.run.records import tracked_values
from cifarlab.training.callbacks import Callback

STATUS = {"completed": "FINISHED", "interrupted": "KILLED", "diverged": "FAILED"}


def require_mlflow() -> None:
    """A UserError now, before a run directory is made, when output.mlflow=true cannot be honoured."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise UserError("output.mlflow=true needs MLflow: pip install 'cifarlab[mlflow]' (or set output.mlflow=false)")


class MLflowLogger(Callback):
    def __init__(self, run_dir: Path, tracking_uri: Optional[str] = None):
        self.run_dir = Path(run_dir)
        self.tracking_uri = tracking_uri or (self.run_dir / MLFLOW_STORE).resolve().as_uri()
        self.client = None
        self.run_id = None

    def on_fit_start(self, state):
        require_mlflow()
        from mlflow.tracking import MlflowClient

        if self.tracking_uri.startswith("file:"):
            # MLflow 3 refuses the file store unless asked: it is what an offline, server-less log needs.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        saved = self.run_dir / MLFLOW_RUN
        if saved.is_file():  # resumed: the same MLflow run
            self.run_id = json.loads(saved.read_text())["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "train.epochs", str(state.cfg.train.epochs))
            return
        self.run_id = self._create_run(state)
        atomic_write_text(saved, json.dumps({"tracking_uri": self.tracking_uri, "run_id": self.run_id}) + "\n")

    def _create_run(self, state) -> str:
        from mlflow.entities import Param

        from cifarlab.config_diff import flatten, scalar

        name = state.cfg.name
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name,
                                     tags={"cifarlab.run_dir": str(self.run_dir.resolve())})
        params = [Param(key, str(scalar(value))[:6000]) for key, value in flatten(state.cfg.to_dict()).items()
                  if key != "description"]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=params[start:start + 100])
        return run.info.run_id

    def _log(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items() if value is not None]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def on_window(self, state):
        self._log(tracked_values("step", state.window), state.window["step"])

    def on_epoch_end(self, state):
        row = state.history[-1]
        self._log(tracked_values("epoch", row), row["step"])

    def on_fit_end(self, state):
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status=STATUS.get(state.status, "KILLED"))

    def on_exception(self, state, error):
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status="FAILED")
