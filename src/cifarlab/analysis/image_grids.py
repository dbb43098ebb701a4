"""The report's image grids: the misclassified gallery, Grad-CAM overlays and the augmentation preview.

Each figure is one Axes with the images placed in inches (not an Axes per image under constrained layout,
which cost ~10 ms an Axes and most of the report's time): the margins and gaps are sized from the
titles' measured width, the figure widens for a long suptitle, panels keep the images' aspect ratio.
Saving and the image conversions are plots.py's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib import rcParams
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cifarlab.analysis.plots import OVERLAY_ALPHA, OVERLAY_CMAP, _as_hwc, _save, _to_numpy


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


# Captions stay legible where the report shows the figure: two images a row at 1.6 in a panel and 11 pt
# make the 10-image figure 1333 px wide, shrunk to the report's 1100 px column with 15 px captions (11 px
# in GitHub's ~830 px one). It was 1.9 in and 8 pt: 1681 px wide, 8.7 px captions.
GRADCAM_PANEL_INCHES = 1.6
GRADCAM_TITLE_POINTS = 11


def plot_gradcam(images_uint8: Any, cam_pred: Any, cam_true: Any, titles: Sequence[str], path: str | Path,
                 other: str = "true class") -> Path:
    """Per image: the image, the predicted-class map over it, the map of `other` over it (the true class,
    or for images without one, e.g. the runner-up class).

    Maps are (N, H, W) in [0, 1]; `titles[i]` names the image in two short lines ("true dog\npred cat (p=0.87)").
    Two images share a row when there are more than four, to keep the figure README-sized.
    """
    count = len(titles)
    per_row = 2 if count > 4 else 1
    panel_titles = [title for image_title in titles for title in (image_title, "predicted-class map", f"{other} map")]
    fig, ax, panels = _image_grid(panel_titles, 3 * per_row, panel_inches=GRADCAM_PANEL_INCHES,
                                  title_fontsize=GRADCAM_TITLE_POINTS,
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
