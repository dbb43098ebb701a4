"""What a run's integrations need, checked before anything is written: before `train` makes the run
directory, and before `resume --epochs` rewrites config.yaml (check everything, then write).

- output.mlflow: MLflow installed, `output.mlflow_uri` a tracking URI MLflow has a store for, an http(s)
  server that answers (within seconds: MLflow's own defaults retry for minutes), and on resume a readable
  mlflow.json naming the run to continue;
- output.wandb: Weights & Biases installed, and on resume a readable wandb.json naming the W&B run and project;
- output.tensorboard: the run's tb/ folder a folder that can be written.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from cifarlab.errors import UserError
from cifarlab.run import layout

# MLflow's defaults (7 retries with backoff, 120 s timeout) turn an unreachable server into minutes of
# silence before a traceback; a training run should say so at once. The user's own settings win.
MLFLOW_FAST_FAIL = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def check_integrations(output_cfg, run_dir: Optional[Path] = None) -> None:
    """Raise one UserError line for the first integration of `output_cfg` that cannot work; `run_dir` is
    the existing run of a resume (None for a new run)."""
    if output_cfg.mlflow:
        _check_mlflow(output_cfg.mlflow_uri, run_dir)
    if output_cfg.wandb:
        from cifarlab.trainer.writers.wandb_logger import require_wandb

        require_wandb()
        if run_dir is not None:
            _check_run_record(Path(run_dir) / layout.WANDB_RUN, ("run_id", "project"),
                              "names the W&B run this run logs to")
    if output_cfg.tensorboard and run_dir is not None:
        _check_writable_folder(Path(run_dir) / layout.TENSORBOARD, "output.tensorboard")


def _check_mlflow(uri: Optional[str], run_dir: Optional[Path]) -> None:
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise UserError("output.mlflow=true needs MLflow: pip install 'cifarlab[mlflow]' (or set output.mlflow=false)")
    for name, value in MLFLOW_FAST_FAIL.items():
        os.environ.setdefault(name, value)
    if run_dir is not None:
        _check_run_record(Path(run_dir) / layout.MLFLOW_RUN, ("run_id",), "names the MLflow run this run logs to")
    if uri:
        _check_tracking_uri(uri)


def _check_run_record(saved: Path, fields: tuple[str, ...], role: str) -> None:
    """A tracker's record of a resumed run (mlflow.json, wandb.json), if there is one: a JSON object whose
    `fields` are strings, as its logger reads it once training has started (too late to refuse cleanly)."""
    if not saved.exists() and not saved.is_symlink():
        return
    try:
        record = json.loads(saved.read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            raise ValueError(f"a JSON object is expected, not {type(record).__name__}")
        missing = [name for name in fields if not isinstance(record.get(name), str) or not record[name]]
        if missing:
            raise ValueError(f"no {' or '.join(missing)} string")
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        tracker = "MLflow" if saved.name == layout.MLFLOW_RUN else "W&B"
        raise UserError(f"{saved} is not readable ({reason}); it {role}: restore it, or delete it to log the "
                        f"rest into a new {tracker} run") from None


def _check_tracking_uri(uri: str) -> None:
    """MLflow must have a store for the URI's scheme, and an http(s) server must answer."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        if uri.startswith(("http://", "https://")):
            client.search_experiments(max_results=1)
    except MlflowException as err:
        reason = " ".join(str(err.message if hasattr(err, "message") else err).split())[:200]
        raise UserError(f"output.mlflow_uri={uri!r} cannot be used: {reason}; give a tracking server "
                        f"(http://host:port), a database (sqlite:///path.db) or file:///folder") from None
    except Exception as err:  # a broken connection surfaces as whatever requests raised
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise UserError(f"output.mlflow_uri={uri!r} cannot be reached ({type(err).__name__}: {reason}); start the "
                        f"server, fix the address, or set output.mlflow=false") from None


def _check_writable_folder(folder: Path, key: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{key}: {folder} is a file, not a folder; move it away")
    existing = folder if folder.exists() else folder.parent
    if not os.access(existing, os.W_OK):
        raise UserError(f"{key}: {existing} cannot be written; make it writable or set {key}=false")
