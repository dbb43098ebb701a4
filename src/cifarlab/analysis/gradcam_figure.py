"""`cifarlab gradcam`: which images to explain, their heat maps and the figure.

    cifarlab.gradcam(".../best.pt", images="3,17,42", method="gradcam++", out="cam.png")

The images are the checkpoint's misclassified test images (highest loss first), test images by index,
or image files of any size. Each row of the figure shows an image, the map for the predicted class and
the map for the true class (test images) or for the runner-up class (own images, which have no true class).
torch is imported by the functions that need it, so that `cifarlab --help` can name the image limit.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence, Union

from cifarlab.atomic import output_target
from cifarlab.errors import UserError

MAX_GRADCAM_IMAGES = 100  # one figure; more is unreadable (and a typo like --count 10000 renders thousands)
GRADCAM_FILE_NAMES = {"gradcam": "gradcam", "gradcam++": "gradcampp"}  # method -> plots/<name>-<checkpoint>.png
MISCLASSIFIED = "misclassified"


def gradcam_figure(checkpoint: Union[str, Path], images: Union[str, Sequence] = MISCLASSIFIED, count: int = 10,
                   layer: Optional[str] = None, method: str = "gradcam", out: Union[str, Path, None] = None,
                   data_dir: Union[str, Path, None] = None) -> Path:
    """Write the Grad-CAM figure of `checkpoint` and return its path. `images`: "misclassified" (the `count`
    with the highest loss), test indices ("3,17,42" or [3, 17, 42]) or image files ("a.png,b.jpg"). `out`
    defaults to the run's plots/gradcam-<checkpoint>.png (gradcampp-... with gradcam++), made again on each
    call; a given `out` is never overwritten. Every argument is checked before the model is loaded."""
    from cifarlab.analysis.gradcam import gradcam
    from cifarlab.analysis.image_grids import plot_gradcam
    from cifarlab.data.normalize import normalize, to_float
    from cifarlab.use.load import load_model
    from cifarlab.use.predict import predictions

    if method not in GRADCAM_FILE_NAMES:
        raise UserError(f"--method must be one of {', '.join(GRADCAM_FILE_NAMES)}, got {method!r}")
    if not 1 <= count <= MAX_GRADCAM_IMAGES:
        raise UserError(f"--count must be in 1..{MAX_GRADCAM_IMAGES}, got {count}")
    images = images if isinstance(images, str) else ",".join(map(str, images))
    chosen = image_choice(images)
    out = output_target(Path(out), "--out") if out is not None else None
    loaded = load_model(checkpoint)
    out = out or default_gradcam_out(Path(checkpoint), method)
    pixels, labels, names = chosen_images(loaded, chosen, count, data_dir, images)
    probs = predictions(loaded, pixels).probs
    top2 = probs.topk(min(2, probs.shape[1]), dim=1).indices
    preds = top2[:, 0]
    second = labels if labels is not None else top2[:, -1]  # own images: compare with the runner-up class
    inputs = normalize(to_float(pixels), loaded.mean, loaded.std, channels_last=False)
    cam_pred = gradcam(loaded.module, inputs, preds, layer=layer, method=method)
    cam_other = gradcam(loaded.module, inputs, second, layer=layer, method=method)
    titles = _titles(loaded.classes, names, probs, preds.tolist(), second.tolist(), own=labels is None)
    return plot_gradcam(pixels, cam_pred, cam_other, titles, out,
                        other="true class" if labels is not None else "runner-up class")


def _titles(classes, names, probs, preds: list[int], others: list[int], own: bool) -> list[str]:
    if not own:
        return [f"{name}: {classes[o]} → {classes[p]} ({100 * probs[i, p]:.0f}%)"
                for i, (name, p, o) in enumerate(zip(names, preds, others))]
    # own images have no true class: the second map is the runner-up's
    return [f"{name}: {classes[p]} {100 * probs[i, p]:.0f}%\nrunner-up {classes[o]} {100 * probs[i, o]:.0f}%"
            for i, (name, p, o) in enumerate(zip(names, preds, others))]


def image_choice(text: str):
    """`images` parsed: "misclassified", a list of test indices, or a list of image paths."""
    if text == MISCLASSIFIED:
        return text
    items = [item.strip() for item in text.split(",")]
    what = "'misclassified', test indices like 0,5,7, or image files separated by commas"
    if not all(items):
        raise UserError(f"--images {text!r} has an empty item; give {what}")
    if len(items) > MAX_GRADCAM_IMAGES:
        raise UserError(f"--images names {len(items)} images; give at most {MAX_GRADCAM_IMAGES}")
    numeric = [bool(re.fullmatch(r"[+-]?\d+", item)) for item in items]
    if all(numeric):
        return [int(item) for item in items]
    if any(numeric):
        raise UserError(f"--images {text!r} mixes test indices and file names; give {what}")
    return [Path(item) for item in items]


def chosen_images(loaded, chosen, count: int, data_dir, text: str):
    """(uint8 images, true labels or None, names) of `chosen` (from `image_choice`): the `count`
    misclassified test images with the highest loss, test images by index, or image files."""
    import torch

    from cifarlab.use.evaluate import run_test_data
    from cifarlab.use.images import as_batch
    from cifarlab.use.predict import predictions

    if chosen != MISCLASSIFIED and not isinstance(chosen[0], int):
        return as_batch(chosen, loaded.in_channels, loaded.image_size), None, [p.name for p in chosen]
    test = run_test_data(loaded, data_dir).test
    if chosen == MISCLASSIFIED:
        chosen = predictions(loaded, test.images, test.labels).misclassified(count)
        if len(chosen) == 0:
            raise UserError("the checkpoint classifies every test image correctly: no misclassified image to "
                            "explain; give --images with test indices or image files")
    else:
        if max(chosen) >= len(test.labels) or min(chosen) < 0:
            raise UserError(f"--images indices must be in 0..{len(test.labels) - 1}, got {text}")
        chosen = torch.tensor(chosen)
    return test.images[chosen], test.labels[chosen], [f"#{i}" for i in chosen.tolist()]


def default_gradcam_out(checkpoint: Path, method: str) -> Path:
    """plots/<method>-<checkpoint name>.png of the run the checkpoint really lies in (symlinks
    and `..` resolved), so the same checkpoint always writes to the same place however its path was spelled."""
    from cifarlab.run.layout import CHECKPOINTS, CONFIG, PLOTS, run_dir_of_checkpoint

    run_dir = run_dir_of_checkpoint(checkpoint)
    if run_dir is None:
        raise UserError(f"{checkpoint} is not inside a run directory (<run>/{CHECKPOINTS}/<file>.pt next to "
                        f"{CONFIG}), so there is no {PLOTS}/ folder for it; give --out FILE.png")
    plots = output_target(run_dir / PLOTS, "the run's plots folder", folder=True)
    out = plots / f"{GRADCAM_FILE_NAMES[method]}-{Path(checkpoint).resolve().stem}.png"  # gradcam-<best|last>.png
    if out.is_dir():
        raise UserError(f"{out} is a folder; remove it or give --out FILE.png")
    return out  # the run's own plot: made again on each call
