"""What the MLflow logger publishes when a run ends: its files and its best model.

- Files: config.yaml, summary.json, metrics.csv, report.md/.html, model_summary.txt at the artifact root,
  plots/ and tables/ as folders (whatever of these the run has written).
- The best model (best.pt, EMA weights where the run kept them) as an MLflow Model in `model/`, saved with
  MLflow's own pytorch flavour: `mlflow.pytorch.load_model("runs:/<id>/model")` gives the network back,
  `mlflow.pyfunc.load_model(...)` and `mlflow models serve` serve it, and `mlflow.register_model` can put it
  in the model registry. mlflow-skinny writes it: the flavour's "pt2" format is a `torch.export` program
  (no cifarlab needed to load it), with its tensor signature stated, because inferring one needs scipy,
  which mlflow-skinny leaves out. A network torch.export cannot trace (data-dependent control flow in
  a user's model) is saved in the flavour's "pickle" format instead, which needs cifarlab to load.
  The model's input is float32 (N, C, H, W) normalised as `(pixel / 255 - mean) / std`; the class names,
  mean/std and image size are in the MLmodel file's `metadata`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from cifarlab.messages import warn
from cifarlab.run.layout import CONFIG, METRICS, MODEL_SUMMARY, PLOTS, REPORT_HTML, REPORT_MD, SUMMARY, TABLES

RUN_FILES = (CONFIG, SUMMARY, METRICS, REPORT_MD, REPORT_HTML, MODEL_SUMMARY)
RUN_FOLDERS = (PLOTS, TABLES)
MODEL_PATH = "model"


def log_run_files(client, run_id: str, run_dir: Path) -> None:
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    for name in RUN_FOLDERS:
        if (run_dir / name).is_dir():
            client.log_artifacts(run_id, str(run_dir / name), name)


def log_best_model(client, run_id: str, checkpoint: Path) -> None:
    """`checkpoint`'s network as the MLflow Model `model/` of the run (see the module doc)."""
    import mlflow.pytorch
    import torch

    from cifarlab.data.normalize import normalize
    from cifarlab.run.model_file import read_model

    stored = read_model(checkpoint)  # fp32, on the CPU, EMA weights where the run kept them
    model, card = stored.network, stored.card
    channels, size = card.in_channels, int(card.image_size)
    pixels = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    example = normalize(pixels, card.mean, card.std, channels_last=False)  # shapes for torch.export
    # MLflow's metadata: the model card plus what this format adds
    metadata = {**card.to_dict(), "input": "float32 (N, C, H, W) = (pixel / 255 - mean) / std",
                "output": "logits (N, num_classes)", "checkpoint": str(checkpoint)}
    options = dict(signature=_signature(example, card.num_classes), metadata=metadata,
                   pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    with tempfile.TemporaryDirectory(prefix="cifarlab-mlflow-") as tmp:
        try:
            mlflow.pytorch.save_model(model, f"{tmp}/pt2", input_example=example.numpy(),
                                      serialization_format="pt2", **options)
            saved = f"{tmp}/pt2"
        except Exception as err:  # torch.export refuses some networks; the pickle format takes any
            warn(f"note: MLflow model saved as a pickle (needs cifarlab to load): torch.export failed: "
                 f"{str(err).splitlines()[0][:200] if str(err) else type(err).__name__}")
            mlflow.pytorch.save_model(model, f"{tmp}/pickle", serialization_format="pickle", **options)
            saved = f"{tmp}/pickle"
        client.log_artifacts(run_id, saved, MODEL_PATH)


def _signature(example, num_classes: int):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    _, C, H, W = example.shape
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, C, H, W))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]))
