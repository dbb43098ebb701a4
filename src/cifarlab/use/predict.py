"""The one way to predict: class probabilities of uint8 images under a model, its precision and its TTA.

    model = cifarlab.load_model("runs/fmnist-quick/<time>/checkpoints/best.pt")
    cifarlab.predict(model, ["shoe.jpg", pil_image, uint8_tensor], top=3)
    # -> [[("Sneaker", 0.91), ("Sandal", 0.06), ("Ankle boot", 0.02)], ...]

Three levels, each built on the one below: `predict_batch` (a network, uint8 images, normalisation,
autocast, TTA -> `Predictions`; the report calls it on the model it has in memory), `predictions` (the
same under a `LoadedModel`: its precision, TTA, device) and `predict` (any images -> top classes; the API
and `cifarlab predict`). `cifarlab gradcam` and `eval`'s report choose their images from `predictions`.
"""
from __future__ import annotations

import contextlib
import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from cifarlab.atomic import atomic_write_text, output_target
from cifarlab.data.folder import IMAGE_EXTENSIONS
from cifarlab.data.normalize import normalize, to_float
from cifarlab.errors import UserError
from cifarlab.messages import say
from cifarlab.models.inference import eval_mode, log_probs, model_device
from cifarlab.use.images import as_batch
from cifarlab.use.load import LoadedModel, load_model


@dataclass
class Predictions:
    probs: torch.Tensor  # (N, K) float32 softmax probabilities (averaged over flips with TTA), CPU
    labels: torch.Tensor  # (N,) int64 true classes, CPU
    losses: torch.Tensor  # (N,) float32 cross-entropy per image, -log probs[label], CPU

    @property
    def preds(self) -> torch.Tensor:
        return self.probs.argmax(dim=1)

    @property
    def correct(self) -> torch.Tensor:
        return self.preds == self.labels

    @property
    def accuracy(self) -> float:
        """Fraction of images classified correctly, in [0, 1]."""
        return float(self.correct.float().mean()) if len(self.labels) else float("nan")

    @property
    def mean_loss(self) -> float:
        return float(self.losses.double().mean()) if len(self.labels) else float("nan")

    def misclassified(self, limit: Optional[int] = None) -> torch.Tensor:
        """Indices of wrong predictions, highest loss first (ties keep dataset order)."""
        wrong = (~self.correct).nonzero().flatten()
        order = self.losses[wrong].sort(descending=True, stable=True).indices
        return wrong[order][:limit]


def predict_batch(model: nn.Module, images_uint8: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
            std: Sequence[float], batch_size: int = 1000,
            autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
            tta: Union[str, bool, None] = None,
            device: Union[str, torch.device, None] = None, channels_last: bool = True,
            progress: str = "none") -> Predictions:
    """Run `model` over uint8 images (N, C, H, W) in eval mode under inference_mode, batch by batch on
    `device` (default: the model's), normalised like training input. Results stay on the device until one
    transfer to the CPU at the end; the model's per-module train/eval modes are restored afterwards.
    `progress` (an `output.progress` mode) shows how far a long run over many images is."""
    from cifarlab.progress import PhaseProgress

    if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
        raise ValueError(f"predict expects uint8 images shaped (N, C, H, W), got {images_uint8.dtype} "
                         f"{tuple(images_uint8.shape)}")
    if len(labels) != len(images_uint8) or len(labels) == 0:
        raise ValueError(f"predict needs as many labels as images (and at least one), got "
                         f"{len(labels)} labels for {len(images_uint8)} images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = torch.device(device) if device is not None else model_device(model)
    chunks = []
    with eval_mode(model), torch.inference_mode(), \
            PhaseProgress("predictions", len(images_uint8), "images", progress, announce=False) as shown:
        for start in range(0, len(images_uint8), batch_size):
            batch = images_uint8[start:start + batch_size].to(device, non_blocking=True)
            inputs = normalize(to_float(batch), mean, std, channels_last=channels_last)
            chunks.append(log_probs(model, inputs, autocast, tta))
            shown.update(len(batch))  # images queued, not finished: no sync with the device
    # Outside inference_mode, so the results are ordinary tensors users may modify or differentiate.
    scores = torch.cat(chunks)
    losses = -scores.gather(1, labels.to(device, dtype=torch.long).view(-1, 1))
    on_cpu = torch.cat([scores.exp(), losses], dim=1).cpu()  # one transfer
    return Predictions(probs=on_cpu[:, :-1].contiguous(), labels=labels.detach().to("cpu", torch.long),
                       losses=on_cpu[:, -1].contiguous())


def predictions(model: LoadedModel, images_uint8: torch.Tensor, labels: Optional[torch.Tensor] = None,
                tta: Union[str, bool, None] = None, batch_size: Optional[int] = None) -> Predictions:
    """`predict_batch` under a loaded checkpoint: its normalisation, precision, device and memory format;
    `tta` None means the run's own, False none; `labels` default to zeros (losses then mean nothing)."""
    labels = torch.zeros(len(images_uint8), dtype=torch.long) if labels is None else labels
    return predict_batch(model.module, images_uint8, labels, model.mean, model.std,
                         batch_size=batch_size or model.config.train.eval_batch_size,
                         autocast=model.precision.autocast, tta=model.tta if tta is None else (tta or None),
                         channels_last=model.channels_last)


def predict(model: Union[LoadedModel, str, Path], images, top: int = 3, tta: Union[str, bool, None] = None,
            batch_size: Optional[int] = None) -> list[list[tuple[str, float]]]:
    """Top-`top` (class name, probability) per image, most likely first, one list per image.

    `model`: a `LoadedModel` or a checkpoint path (loaded with `load_model`'s defaults). `images`: one
    image or a list of them, each a file path, a PIL image, or a numpy array / torch tensor (H, W),
    (H, W, C) or (C, H, W), uint8 or float in [0, 1]; a 4-D array is a batch. Each is resized by the
    rule in `cifarlab.use.images`. `tta` defaults to the run's own; False turns it off, "flip" or
    "flip_translate" choose."""
    if isinstance(model, (str, Path)):
        model = load_model(model)
    if not isinstance(model, LoadedModel):
        raise UserError(f"predict needs a checkpoint path or a model from cifarlab.load_model, got "
                        f"{type(model).__name__}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise UserError(f"top must be a positive integer, got {top!r}")
    items = images if isinstance(images, (list, tuple)) else [images]
    folder = next((item for item in items if isinstance(item, (str, Path)) and Path(item).is_dir()), None)
    if folder is not None:  # one row per item given: a folder of many images cannot be one row
        raise UserError(f"{folder} is a folder; predict returns one row per image given, so give its files, or call "
                        f"cifarlab.predict_files(model, [folder]), which reads folders as `cifarlab predict` does "
                        f"and names each file")
    batch = as_batch(images, model.in_channels, model.image_size)
    probs = predictions(model, batch, tta=tta, batch_size=batch_size).probs
    values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
    return [[(model.classes[k], float(p)) for p, k in zip(row_p.tolist(), row_k.tolist())]
            for row_p, row_k in zip(values, indices)]


def image_files(paths: Sequence[Union[str, Path]]) -> list[Path]:
    """The image files `paths` name: a file as given, a folder as the image files under it (recursively,
    by extension, hidden entries skipped, sorted). A path that does not exist, or a folder without an
    image, is a UserError."""
    found = []
    for path in map(Path, paths):
        if not path.is_dir():
            if not path.exists():
                raise UserError(f"{path} does not exist; give image files or folders of images")
            found.append(path)
            continue
        inside = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not inside:
            raise UserError(f"folder {path} holds no image file ({', '.join(IMAGE_EXTENSIONS)}), also in its "
                            f"subfolders")
        found.extend(inside)
    return found


def write_predictions_csv(files: Sequence[Path], ranked: Sequence[list[tuple[str, float]]], out: Path) -> Path:
    """`out`: one row per image, `image,class_1,probability_1,...,class_k,probability_k` (k = top)."""
    top = max((len(row) for row in ranked), default=0)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image"] + [f"{what}_{k}" for k in range(1, top + 1) for what in ("class", "probability")])
    for path, row in zip(files, ranked):
        writer.writerow([str(path)] + [value for name, p in row for value in (name, f"{p:.6g}")])
    atomic_write_text(out, text.getvalue())
    return out


def predict_files(model: Union[LoadedModel, str, Path], paths: Sequence[Union[str, Path]], top: int = 3,
                  csv_out: Union[str, Path, None] = None) -> list[tuple[Path, list[tuple[str, float]]]]:
    """`cifarlab predict`: (image file, its top-`top` (class, probability)) for each image file that
    `paths` name (folders searched recursively, see `image_files`); with `csv_out`, a new file (never
    overwritten, checked before any work) gets the same as `write_predictions_csv` rows."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:  # from Python, "3" compared with 1 raised
        raise UserError(f"--top must be at least 1 (a whole number), got {top!r}")
    csv_out = output_target(Path(csv_out), "--csv") if csv_out is not None else None
    files = image_files(paths)
    results = predict(model, files, top=top)
    if csv_out is not None:
        say(f"predictions of {len(files)} images: {write_predictions_csv(files, results, csv_out)}")
    return list(zip(files, results))
