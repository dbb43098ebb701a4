"""Figures for a run's report: curves, learning rate, per-class bars, confusion, run comparison (the image
grids, gallery, Grad-CAM and augmentation preview, are in image_grids.py).

Every function draws onto its own `matplotlib.figure.Figure` (Agg canvas, no pyplot state, so it is
safe in threads and never opens a window), saves a PNG at README size and returns the path.
Metric rows are run/metrics.EpochRow (`read_metrics`); a metric not measured is None.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cifarlab.atomic import WriteError, atomic_write
from cifarlab.run.layout import BEST
from cifarlab.run.metrics import EpochRow, best_row

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


def _rows(rows: Sequence[EpochRow], kind: str) -> list[EpochRow]:
    return [row for row in rows if row.kind == kind]


def _series(rows: Sequence[EpochRow], x_key: str, y_key: str, scale: float = 1.0):
    """(xs, ys) of the rows where both metrics are measured."""
    points = [(row.value(x_key), row.value(y_key)) for row in rows]
    points = [(float(x), float(y) * scale) for x, y in points if x is not None and y is not None]
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


# ---------------------------------------------------------------- training curves

def plot_curves(metrics_rows: Sequence[EpochRow], path: str | Path, monitor: str) -> Path:
    """Two panels over epochs: train/(validation)/test loss, and the same accuracies in percent, with the
    epoch best.pt holds (the best `monitor`) marked by its test accuracy."""
    epochs = _rows(metrics_rows, "epoch")
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    splits = (("train", "train", "-o"), ("val", "validation", "-^"), ("test", "test", "-s"))
    for key, label, style in splits:
        if not any(row.value(f"{key}_loss") is not None for row in epochs):
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


def _best(epoch_rows: Sequence[EpochRow], monitor: str) -> tuple[float | None, float | None]:
    """(epoch, test accuracy in %) of the epoch with the best `monitor` (the first on ties, like best.pt)."""
    best = best_row([row for row in epoch_rows if row.test_acc is not None], monitor)
    if best is None:
        return None, None
    return float(best.epoch), 100.0 * best.test_acc


def plot_lr(metrics_rows: Sequence[EpochRow], path: str | Path) -> Path:
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
    width = max(7.0, 0.55 * K)
    fig = Figure(figsize=(width, 4.2), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(range(K), percent, color="#4C72B0")
    if K <= 30:
        ax.bar_label(bars, labels=[f"{p:.1f}" for p in percent], fontsize=8, padding=2)
    # Slanted when the longest name is wider than its bar's slot (CIFAR-10's "airplane" and "automobile"
    # ran into each other upright): ~0.08 inch a character at the default 10 pt.
    slanted = max(map(len, classes), default=0) * 0.08 > 0.85 * width / max(K, 1)
    ax.set_xticks(range(K), list(classes), rotation=45 if slanted else 0, ha="right" if slanted else "center")
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


# ---------------------------------------------------------------- several runs

def plot_compare(curves: Mapping[str, Sequence[EpochRow]], path: str | Path) -> Path:
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
