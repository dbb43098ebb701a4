"""`cifarlab eval`: a model file's test metrics, evaluated as its run did (its precision, its TTA), so one
checkpoint has one accuracy everywhere: loss and accuracy by the run's own `evaluate`, then top-5
accuracy (more than 5 classes), macro F1 and calibration error from the same predictions."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional, Union

from cifarlab.run.evaluation import Evaluation


def evaluate_model_file(checkpoint: Union[str, Path], precision: Optional[str] = None,
                        tta: Union[str, bool, None] = None, data_dir: Union[str, Path, None] = None) -> Evaluation:
    """The `Evaluation` (test loss, accuracy, top-5 with more than 5 classes, macro F1, ECE) of
    `checkpoint` (a .pt file or an exported model folder) on its run's test split, looked up under
    `data_dir`. `precision` and `tta` default to the run's own; `tta=False` evaluates without TTA."""
    from cifarlab.analysis.metrics import beyond_accuracy
    from cifarlab.use.evaluate import evaluate_checkpoint
    from cifarlab.use.load import load_model

    loaded, batches = load_model(checkpoint, precision=precision), []
    result = evaluate_checkpoint(loaded, data_dir, tta, collect=batches)
    return replace(result, **beyond_accuracy(batches, len(loaded.classes)))
