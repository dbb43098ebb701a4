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

import sys
import tempfile
from pathlib import Path

RUN_FILES = ("config.yaml", "summary.json", "metrics.csv", "report.md", "report.html", "model_summary.txt")
RUN_FOLDERS = ("plots", "tables")
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
    from cifarlab.use.load import load_model

    loaded = load_model(checkpoint, device="cpu", precision="fp32")
    model = loaded.module.float().to(memory_format=torch.contiguous_format).eval()
    pixels = torch.rand(2, loaded.in_channels, loaded.image_size, loaded.image_size,
                        generator=torch.Generator().manual_seed(0))
    example = normalize(pixels, loaded.mean, loaded.std, channels_last=False)  # shapes for torch.export
    metadata = {"classes": list(loaded.classes), "mean": list(loaded.mean), "std": list(loaded.std),
                "image_size": loaded.image_size, "in_channels": loaded.in_channels, "tta": loaded.tta,
                "input": "float32 (N, C, H, W) = (pixel / 255 - mean) / std", "output": "logits (N, num_classes)",
                "checkpoint": str(checkpoint)}
    options = dict(signature=_signature(example, len(loaded.classes)), metadata=metadata,
                   pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    with tempfile.TemporaryDirectory(prefix="cifarlab-mlflow-") as tmp:
        try:
            mlflow.pytorch.save_model(model, f"{tmp}/pt2", input_example=example.numpy(),
                                      serialization_format="pt2", **options)
            saved = f"{tmp}/pt2"
        except Exception as err:  # torch.export refuses some networks; the pickle format takes any
            print(f"note: MLflow model saved as a pickle (needs cifarlab to load): torch.export failed: "
                  f"{str(err).splitlines()[0][:200] if str(err) else type(err).__name__}", file=sys.stderr)
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
