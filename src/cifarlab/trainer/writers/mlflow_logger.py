"""An optional MLflow logger (`output.mlflow: true`, needs `pip install cifarlab[mlflow]`).

One MLflow run per cifarlab run: the flat config as params when it starts, the logging windows
(`step/train_loss`, ...) and every epoch's metrics (`epoch/test_acc`, ...: the TensorBoard tags, from
run/metrics.EpochRow) against the optimizer step, and at the end the status (FINISHED, KILLED when
interrupted, FAILED when diverged), once the run's files (config, summary, report, plots) and its best
model are logged as artifacts (trainer/writers/mlflow_artifacts.py). The MLflow run id is kept in
`<run_dir>/mlflow.json`, so `cifarlab resume` logs into the same MLflow run. The tracking store is
`output.mlflow_uri`, else a local file store in `<run_dir>/mlruns` (no server; `mlflow ui
--backend-store-uri <run_dir>/mlruns` shows it). Params are the config the run started with: MLflow
cannot change a param, so an extension (`resume --epochs`) is recorded as the tag `train.epochs`.

`mlflow.json` survives a move of the run directory: the default store is kept as a path relative to
the run directory (`"store": "mlruns"`), any other store as the URI given.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

from cifarlab.atomic import atomic_write_text
from cifarlab.errors import UserError
from cifarlab.run.layout import BEST, CHECKPOINTS, MLFLOW_RUN, MLFLOW_STORE
from cifarlab.run.metrics import tracked_values
from cifarlab.trainer.callbacks import Callback

STATUS = {"completed": "FINISHED", "interrupted": "KILLED", "diverged": "FAILED"}


def require_mlflow() -> None:
    """A UserError now, before a run directory is made, when output.mlflow=true cannot be honoured."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise UserError("output.mlflow=true needs MLflow: pip install 'cifarlab[mlflow]' (or set output.mlflow=false)")


class MLflowLogger(Callback):
    def __init__(self, run_dir: Path, tracking_uri: Optional[str] = None):
        self.run_dir = Path(run_dir)
        self.given_uri = tracking_uri
        self.tracking_uri = tracking_uri or (self.run_dir / MLFLOW_STORE).resolve().as_uri()
        self.client = None
        self.run_id = None

    def on_fit_start(self, state):
        require_mlflow()
        from mlflow.tracking import MlflowClient

        if self.tracking_uri.startswith("file:"):
            # MLflow 3 refuses the file store unless asked: it is what an offline, server-less log needs.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        saved = self.run_dir / MLFLOW_RUN
        if saved.is_file():  # resumed: the same MLflow run, in the store it was logged to
            record = json.loads(saved.read_text())
            self.run_id = record["run_id"]
            if "store" in record:
                self.tracking_uri = (self.run_dir / record["store"]).resolve().as_uri()
                repoint_moved_store(self.run_dir / record["store"], self.run_id)
            else:  # a store given by URI, or a run written before the store was kept relative
                self.tracking_uri = record["tracking_uri"]
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "train.epochs", str(state.cfg.train.epochs))
            return
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.run_id = self._create_run(state)
        where = {"tracking_uri": self.given_uri} if self.given_uri else {"store": MLFLOW_STORE}
        atomic_write_text(saved, json.dumps({**where, "run_id": self.run_id}) + "\n")

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
        self._log(tracked_values(state.process.window), state.process.window.step)

    def on_epoch_end(self, state):
        row = state.progress.history[-1]
        self._log(tracked_values(row), row.step)

    def on_run_end(self, state):
        if self.client is None or self.run_id is None:
            return
        from cifarlab.trainer.writers.mlflow_artifacts import log_best_model, log_run_files

        try:
            log_run_files(self.client, self.run_id, self.run_dir)
            best = self.run_dir / CHECKPOINTS / BEST
            if state.status == "completed" and best.is_file():
                log_best_model(self.client, self.run_id, best)
        finally:
            self.client.set_terminated(self.run_id, status=STATUS.get(state.status, "KILLED"))

    def on_exception(self, state, error):
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status="FAILED")

def repoint_moved_store(store: Path, run_id: str) -> None:
    """After the run directory moved, point MLflow's local file store at its new place.

    MLflow's file store writes absolute artifact locations into its meta.yaml files, so after a move its
    client would list artifacts at, and write new ones to, the old place (outside the run directory, or
    nowhere). MLflow has no call that changes them; this store is the run's own, so the stale prefix is
    replaced in its meta.yaml files (their documented keys: `artifact_location`, `artifact_uri`)."""
    import yaml

    here = store.resolve().as_uri()
    metas = [path for path in store.glob(f"*/{run_id}/meta.yaml")]
    if not metas:
        return
    recorded = yaml.safe_load(metas[0].read_text()).get("artifact_uri", "")
    experiment_id = metas[0].parent.parent.name
    suffix = f"/{experiment_id}/{run_id}/artifacts"
    if not recorded.endswith(suffix) or recorded.startswith(here + "/"):
        return
    old = recorded[: -len(suffix)]
    for meta in store.glob("**/meta.yaml"):
        record = yaml.safe_load(meta.read_text())
        changed = False
        for key in ("artifact_location", "artifact_uri"):
            value = record.get(key)
            if isinstance(value, str) and (value == old or value.startswith(old + "/")):
                record[key], changed = here + value[len(old):], True
        if changed:
            atomic_write_text(meta, yaml.safe_dump(record, sort_keys=False))
    # MLflow caches each run's artifact location per process: drop the stale one (a move and a resume
    # within one Python session).
    from mlflow.tracking._tracking_service import utils as tracking_utils

    getattr(tracking_utils, "_artifact_repos_cache", {}).pop(run_id, None)
