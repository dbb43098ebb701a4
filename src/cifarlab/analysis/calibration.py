"""The report's calibration section: a reliability diagram (accuracy against confidence per bin, with the
share of images in each bin) and the expected calibration error (ECE) it summarises."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cifarlab.analysis.plots import _save


def plot_reliability(table: dict, ece: float, path: str | Path) -> Path:
    """Bars of accuracy per confidence bin (`analysis.metrics.calibration_bins`), the diagonal a perfectly
    calibrated model would follow, the gap to it shaded, and below, how many images fall in each bin."""
    edges = table["edges"].numpy()
    counts, accuracy, confidence = (table[key].numpy() for key in ("counts", "accuracy", "confidence"))
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    filled = counts > 0
    fig = Figure(figsize=(5.2, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.bar(centres[filled], accuracy[filled], width=width[filled], color="#4C72B0", edgecolor="white",
            label="accuracy")
    gap_low = np.minimum(accuracy, confidence)[filled]
    top.bar(centres[filled], np.abs(accuracy - confidence)[filled], bottom=gap_low, width=width[filled],
            color="#DD8452", alpha=0.45, label="gap to confidence")
    top.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect calibration")
    top.set(title=f"Reliability diagram (ECE {100 * ece:.2f}%)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, counts / max(counts.sum(), 1) * 100, width=width, color="#55A868", edgecolor="white")
    bottom.set(xlabel="confidence (top probability)", ylabel="images (%)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    return _save(fig, path)
