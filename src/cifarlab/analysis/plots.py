"""Figures for a run's report: curves, learning rate, per-class bars, confusion, galleries, Grad-CAM.

Every function draws onto its own `matplotlib.figure.Figure` (Agg canvas, no pyplot state, so it is
safe in threads and never opens a window), saves a PNG at README size and returns the path.
Metric rows are `metrics.csv` rows as dicts; values may be strings (straight from `csv.DictReader`)
or numbers, empty cells are `""` or `None`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from cifarlab.atomic import WriteError, atomic_write
from cifarlab.run.layout import BEST

DPI = 120
OVERLAY_ALPHA = 0.5
OVERLAY_CMAP = "jet"


# ---------------------------------------------------------------- helpers

def _save(fig: Figure, path: str | Path, tight: bool = False) -> Path:
    """`fig` as a PNG at `path`. Constrained layout or `_image_grid` has fitted everything into the figure
    already; `tight` also crops the margins that an equal-aspect plot leaves, at the cost of one more pass
    measuring every artist, so only the confusion matrix asks for it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a read-only run directory: one line, like every other write
        raise WriteError(f"cannot write {path}: {err.strerror or err}") from None
    FigureCanvasAgg(fig)
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=DPI, facecolor="white",
                                                  bbox_inches="tight" if tight else None))
    return path


def _num(value: Any) -> float | None:
    """A metrics cell as float, or None when empty."""
    if value is None or value == "":
        return None
    return float(value)


def _rows(rows: Sequence[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [row for row in rows if row.get("kind") == kind]


def _series(rows: Sequence[Mapping[str, Any]], x_key: str, y_key: str, scale: float = 1.0):
    """(xs, ys) of the rows where both cells are filled."""
    points = [(_num(r.get(x_key)), _num(r.get(y_key))) for r in rows]
    points = [(x, y * scale) for x, y in points if x is not None and y is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _as_hwc(image: Any) -> tuple[np.ndarray, str | None]:
    """One (C, H, W) image (uint8 0..255 or float 0..1) -> (H, W[, 3]) float in [0, 1] and its cmap."""
    pixels = _to_numpy(image).astype(np.float32)
    if pixels.max(initial=0) > 1.0:
        pixels = pixels / 255.0
    pixels = np.clip(pixels, 0.0, 1.0)
    if pixels.shape[0] == 1:
        return pixels[0], "gray"
    return pixels.transpose(1, 2, 0), None


def _grid(count: int, ncols: int) -> tuple[int, int]:
    ncols = max(1, min(ncols, count))
    return (count + ncols - 1) // ncols, ncols


GRID_MARGIN_INCHES = 0.1
GRID_GAP_INCHES = 0.2
SUPTITLE_INCHES = 0.4
TITLE_PAD_POINTS = 6.0  # matplotlib's axes.titlepad


def _text_inches(texts: Sequence[str], fontsize: float | str) -> tuple[float, float]:
    """(widest line, tallest text) of `texts` in inches at `fontsize`, measured with the font's metrics."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    font, measure = FontProperties(size=fontsize), TextToPath()
    fontsize = font.get_size_in_points()
    widths = [measure.get_text_width_height_descent(line, font, ismath=False)[0]
              for text in texts for line in text.split("\n") if line]
    lines = max((len(text.split("\n")) for text in texts if text), default=0)
    return max(widths, default=0.0) / 72, lines * fontsize * 1.2 / 72  # 1.2: matplotlib's line spacing


def _image_grid(titles: Sequence[str], ncols: int, panel_inches: float, suptitle: str, title_fontsize: float = 9,
                left_inches: float = GRID_MARGIN_INCHES, aspect: float = 1.0) -> tuple[Figure, Any, list]:
    """A figure of one panel per title ("" for none), `panel_inches` wide and `aspect` (height / width) as
    high, `ncols` a row, `suptitle` on top: the figure, its one Axes (axis off, data coordinates in inches
    from the top left) and each panel's (left, top, width, height).

    Laid out once here, in inches from the titles' measured size, on a single Axes: one Axes per image under
    constrained layout and bbox_inches="tight" measured every axis, tick and title on each save, and
    creating the Axes alone cost ~10 ms each, which made the image grids most of the report's time
    (Grad-CAM alone 4 s of a 12 s report on one CPU core).
    """
    nrows, ncols = _grid(max(len(titles), 1), ncols)
    title_width, title_height = _text_inches(titles, title_fontsize)
    title_inches = title_height + TITLE_PAD_POINTS / 72 if title_height else 0.0
    overhang = max(0.0, title_width - panel_inches)  # a title wider than its panel reaches into the gaps
    gap, side = max(GRID_GAP_INCHES, overhang + 0.1), max(GRID_MARGIN_INCHES, overhang / 2 + 0.05)
    left = max(left_inches, side)
    width = left + ncols * panel_inches + (ncols - 1) * gap + side
    suptitle_width = _text_inches([suptitle], rcParams["figure.titlesize"])[0] + 2 * GRID_MARGIN_INCHES
    left, width = left + max(0.0, suptitle_width - width) / 2, max(width, suptitle_width)
    panel_height = panel_inches * aspect
    row_inches = title_inches + panel_height + GRID_GAP_INCHES
    height = SUPTITLE_INCHES + nrows * row_inches - GRID_GAP_INCHES + GRID_MARGIN_INCHES
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1), xlim=(0, width), ylim=(height, 0))
    ax.set_axis_off()
    ax.set_autoscale_on(False)
    panels = []
    for i, title in enumerate(titles):
        row, col = divmod(i, ncols)
        x, y = left + col * (panel_inches + gap), SUPTITLE_INCHES + row * row_inches + title_inches
        panels.append((x, y, panel_inches, panel_height))
        if title:
            ax.text(x + panel_inches / 2, y - TITLE_PAD_POINTS / 72, title, ha="center", va="bottom",
                    fontsize=title_fontsize, linespacing=1.2)
    fig.suptitle(suptitle, y=1 - GRID_MARGIN_INCHES / height, va="top")
    return fig, ax, panels


def _aspect(images: Any) -> float:
    """Height / width of (N, C, H, W) images; 1 for none."""
    return images.shape[-2] / images.shape[-1] if len(images) else 1.0


def _draw(ax, panel: tuple[float, float, float, float], pixels: np.ndarray, cmap: str | None = None,
          frame: bool = False, **imshow_options) -> None:
    """`pixels` (H, W[, 3]) in [0, 1] into `panel` of an `_image_grid` at its own aspect ratio, centred
    across and at the top (under its title)."""
    x, y, panel_width, panel_height = panel
    H, W = pixels.shape[:2]
    scale = min(panel_width / W, panel_height / H)
    width, height = W * scale, H * scale
    x += (panel_width - width) / 2
    ax.imshow(pixels, cmap=cmap, vmin=0.0, vmax=1.0, extent=(x, x + width, y + height, y), aspect="auto",
              **{"interpolation": "nearest", **imshow_options})
    if frame:
        ax.add_patch(Rectangle((x, y), width, height, fill=False, edgecolor="black", linewidth=0.8))


# ---------------------------------------------------------------- training curves

def plot_curves(metrics_rows: Sequence[Mapping[str, Any]], path: str | Path, monitor: str = "test_acc") -> Path:
    """Two panels over epochs: train/(validation)/test loss, and the same accuracies in percent, with the
    epoch best.pt holds (the best `monitor`) marked by its test accuracy."""
    epochs = _rows(metrics_rows, "epoch")
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    splits = (("train", "train", "-o"), ("val", "validation", "-^"), ("test", "test", "-s"))
    for key, label, style in splits:
        if not any(row.get(f"{key}_loss") is not None for row in epochs):
            continue
        loss_ax.plot(*_series(epochs, "epoch", f"{key}_loss"), style, markersize=3, label=label)
        acc_ax.plot(*_series(epochs, "epoch", f"{key}_acc", scale=100.0), style, markersize=3, label=label)
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="cross-entropy loss")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    best_epoch, best_acc = _best(epochs, monitor)
    if best_epoch is not None:
        label = "best test" if monitor == "test_acc" else f"{BEST} ({monitor}): test"
        acc_ax.annotate(f"{label} {best_acc:.2f}%\n(epoch {best_epoch:g})", (best_epoch, best_acc),
                        xytext=(0, -40), textcoords="offset points", ha="center", fontsize=9,
                        arrowprops=dict(arrowstyle="->", color="gray"))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Training curves")
    return _save(fig, path)


def _best(epoch_rows, monitor: str = "test_acc") -> tuple[float | None, float | None]:
    """(epoch, test accuracy in %) of the epoch with the best `monitor` (the first on ties, like best.pt)."""
    rows = [row for row in epoch_rows if row.get(monitor) not in (None, "") and row.get("test_acc") not in (None, "")]
    if not rows:
        return None, None
    scores = np.array([float(row[monitor]) for row in rows])  # rows may be metrics.csv's strings
    i = int(np.argmin(scores) if monitor.endswith("loss") else np.argmax(scores))
    return float(rows[i]["epoch"]), 100.0 * float(rows[i]["test_acc"])


def plot_lr(metrics_rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Learning rate over global steps (step rows as a line, epoch rows as markers)."""
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    steps, lrs = _series(_rows(metrics_rows, "step"), "step", "lr")
    epoch_steps, epoch_lrs = _series(_rows(metrics_rows, "epoch"), "step", "lr")
    if steps:
        order = np.argsort(steps)
        ax.plot(np.asarray(steps)[order], np.asarray(lrs)[order], "-", label="logged steps")
    if epoch_steps:
        ax.plot(epoch_steps, epoch_lrs, "o", markersize=4, label="end of epoch")
    values = [v for v in lrs + epoch_lrs if v > 0]
    # Step decays span decades: on a linear axis everything after the first drop looks like zero.
    if values and max(values) / min(values) >= 100:
        ax.set_yscale("log")
    ax.set(title="Learning rate schedule", xlabel="global step", ylabel="learning rate")
    ax.grid(alpha=0.3)
    if steps or epoch_steps:
        ax.legend()
    return _save(fig, path)


# ---------------------------------------------------------------- per-class results

def plot_per_class(acc: Any, classes: Sequence[str], path: str | Path) -> Path:
    """Bar chart of per-class accuracy (fractions in [0, 1]) with the percentage on each bar."""
    percent = _to_numpy(acc).astype(np.float64) * 100.0
    K = len(classes)
    fig = Figure(figsize=(max(7.0, 0.55 * K), 4.2), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(range(K), percent, color="#4C72B0")
    if K <= 30:
        ax.bar_label(bars, labels=[f"{p:.1f}" for p in percent], fontsize=8, padding=2)
    ax.set_xticks(range(K), list(classes), rotation=45 if K > 10 else 0, ha="right" if K > 10 else "center")
    mean = float(np.mean(percent))
    ax.axhline(mean, color="gray", linestyle="--", linewidth=1)
    ax.set(title=f"Test accuracy per class (dashed: class mean {mean:.1f}%)", xlabel="class",
           ylabel="accuracy (%)", ylim=(0, 108))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_confusion(conf: Any, classes: Sequence[str], path: str | Path, normalised: bool,
                   row_totals: Any = None) -> Path:
    """Heat map of a (K, K) confusion matrix, rows = true class; `normalised` shows row percentages, of
    `row_totals` when `conf` is a block of a larger matrix (each true class's images in all columns)."""
    counts = _to_numpy(conf).astype(np.float64)
    K = len(classes)
    totals = counts.sum(axis=1) if row_totals is None else _to_numpy(row_totals).astype(np.float64)
    values = counts / np.maximum(totals[:, None], 1) * 100.0 if normalised else counts
    side = max(6.0, 0.55 * K)
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of true class" if normalised else "images")
    ax.set_xticks(range(K), list(classes), rotation=45, ha="right")
    ax.set_yticks(range(K), list(classes))
    if K <= 20:
        threshold = values.max(initial=0) / 2
        for i in range(K):
            for j in range(K):
                text = f"{values[i, j]:.1f}" if normalised else f"{int(values[i, j])}"
                # Inside the axes by construction: kept out of the layout pass, which measures each artist.
                ax.text(j, i, text, ha="center", va="center", fontsize=8, in_layout=False,
                        color="white" if values[i, j] > threshold else "black")
    kind = "row-normalised, %" if normalised else "counts"
    ax.set(title=f"Confusion matrix ({kind})", xlabel="predicted class", ylabel="true class")
    return _save(fig, path, tight=True)


# ---------------------------------------------------------------- image grids

def plot_gallery(images_uint8: Any, titles: Sequence[str], path: str | Path, ncols: int = 5) -> Path:
    """Grid of (N, C, H, W) images with a title each, e.g. "dog → cat (p=0.87)\\nloss 2.31"."""
    fig, ax, panels = _image_grid(titles, ncols, panel_inches=2.0, aspect=_aspect(images_uint8),
                                  suptitle="Misclassified test images, highest loss first")
    for panel, image in zip(panels, images_uint8):
        _draw(ax, panel, *_as_hwc(image), frame=True)
    return _save(fig, path)


def _upsample(cam: Any, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map resized bilinearly to the image size, if it is not already."""
    cam = _to_numpy(cam).astype(np.float32)
    if cam.shape == size:
        return cam
    import torch
    import torch.nn.functional as F

    resized = F.interpolate(torch.from_numpy(cam)[None, None], size=size, mode="bilinear", align_corners=False)
    return resized[0, 0].numpy()


def plot_gradcam(images_uint8: Any, cam_pred: Any, cam_true: Any, titles: Sequence[str], path: str | Path,
                 other: str = "true class") -> Path:
    """Per image: the image, the predicted-class map over it, the map of `other` over it (the true class,
    or for images without one, e.g. the runner-up class).

    Maps are (N, H, W) in [0, 1]; `titles[i]` names the image ("true dog, pred cat (p=0.87)").
    Two images share a row when there are more than four, to keep the figure README-sized.
    """
    count = len(titles)
    per_row = 2 if count > 4 else 1
    panel_titles = [title for image_title in titles for title in (image_title, "predicted-class map", f"{other} map")]
    fig, ax, panels = _image_grid(panel_titles, 3 * per_row, panel_inches=1.9, title_fontsize=8,
                                  aspect=_aspect(images_uint8),
                                  suptitle=f"Grad-CAM: where the model looked for its prediction vs. for the {other}")
    for i in range(count):
        pixels, cmap = _as_hwc(images_uint8[i])
        for panel, cam in zip(panels[3 * i: 3 * i + 3], (None, cam_pred[i], cam_true[i])):
            _draw(ax, panel, pixels, cmap)
            if cam is not None:
                _draw(ax, panel, _upsample(cam, pixels.shape[:2]), OVERLAY_CMAP, alpha=OVERLAY_ALPHA,
                      interpolation="bilinear")
    return _save(fig, path)


def plot_augment_preview(before_uint8: Any, after_float01: Any, path: str | Path) -> Path:
    """The same training images before (top row) and after (bottom row) the recipe's augmentation."""
    count = max(len(before_uint8), 1)
    fig, ax, panels = _image_grid([""] * (2 * count), count, panel_inches=1.4, left_inches=0.35,
                                  aspect=_aspect(before_uint8),
                                  suptitle="Training images before and after augmentation")
    for i in range(len(before_uint8)):
        _draw(ax, panels[i], *_as_hwc(before_uint8[i]), frame=True)
        _draw(ax, panels[count + i], *_as_hwc(after_float01[i]), frame=True)
    for (x, y, _, height), label in zip((panels[0], panels[count]), ("original", "augmented")):
        ax.text(x - 0.08, y + height / 2, label, rotation=90, ha="right", va="center", fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------- several runs

def plot_compare(curves: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> Path:
    """Test accuracy (left) and test loss (right) per epoch, one line per run label."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    for label, rows in curves.items():
        epochs = _rows(rows, "epoch")
        acc_ax.plot(*_series(epochs, "epoch", "test_acc", scale=100.0), "-o", markersize=3, label=label)
        loss_ax.plot(*_series(epochs, "epoch", "test_loss"), "-o", markersize=3, label=label)
    acc_ax.set(title="Test accuracy", xlabel="epoch", ylabel="accuracy (%)")
    loss_ax.set(title="Test loss", xlabel="epoch", ylabel="cross-entropy loss")
    for ax in (acc_ax, loss_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize=8)
    fig.suptitle("Run comparison")
    return _save(fig, path)
