"""The run report's sections on the analysed model's predictions for the test split: per-class accuracy and
confusion, precision/recall/F1, calibration, the misclassified images and their Grad-CAM maps. Each returns a
`Section` (analysis/report.py writes them) and writes its plots to plots/ and its complete tables to tables/."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from cifarlab.analysis import image_grids, plots
from cifarlab.analysis.report import Image, Section, Table, Text, markdown_table
from cifarlab.atomic import atomic_write, atomic_write_text
from cifarlab.run import layout
from cifarlab.run.summary import display

TOP_CONFUSED = 10
PLOT_CLASSES = 30  # beyond this many classes, plots show the most-confused ones
CALIBRATION_BINS = 15  # torchmetrics' and Guo et al.'s default


def as_cpu(tensor: Any) -> torch.Tensor:
    return torch.as_tensor(tensor).detach().cpu()


def _write_table(run_dir: Path, name: str, header: Sequence[str], rows: Sequence[Sequence[Any]],
                 shown_rows: Optional[Sequence[Sequence[Any]]] = None) -> None:
    """tables/<name>.csv with `rows` as they are (numbers stay numbers), and tables/<name>.md with
    `shown_rows` (the same rows formatted for reading, e.g. percentages), default `rows`."""
    tables = run_dir / layout.TABLES
    tables.mkdir(parents=True, exist_ok=True)
    def write_csv(handle) -> None:
        writer = csv.writer(handle, lineterminator="\r\n")  # csv's own default, as open(newline="") gave
        writer.writerow(header)
        writer.writerows(rows)

    atomic_write(tables / f"{name}.csv", write_csv, mode="w")
    atomic_write_text(tables / f"{name}.md", markdown_table(header, shown_rows or rows))


def class_sections(run_dir: Path, predictions, classes: Sequence[str]) -> list[Section]:
    """Per-class accuracy and confusion. Tables in tables/ are complete (every class; every non-zero
    confusion cell in confusion.csv); beyond PLOT_CLASSES classes the plots and the report's own tables show
    the classes with the most errors, so memory and time grow with the test split, not with classes squared
    (a 300-class report peaked at 16.6 GB drawing a 300x300 matrix with every label)."""
    from cifarlab.analysis.metrics import confusion_cells, dense_confusion, most_confused_classes

    K = len(classes)
    labels, preds = as_cpu(predictions.labels).long(), as_cpu(predictions.preds).long()
    cells = confusion_cells(labels, preds, K)
    totals = torch.bincount(labels, minlength=K)
    correct = torch.bincount(labels[labels == preds], minlength=K)
    acc = correct.double() / totals.double()  # NaN for a class absent from the test split
    header = ("class", "correct", "total", "accuracy")
    fractions = [None if acc[k].isnan() else round(float(acc[k]), 6) for k in range(K)]
    numbers = [(classes[k], int(correct[k]), int(totals[k]), fractions[k]) for k in range(K)]  # accuracy in [0, 1]
    rows = [(*row[:3], display("test_acc", row[3])) for row in numbers]
    _write_table(run_dir, "per_class", header, numbers, rows)
    _write_table(run_dir, "confusion", ("true", "predicted", "count"),
                 [(classes[t], classes[p], n) for t, p, n in cells.tolist()])
    shown = most_confused_classes(cells, K, PLOT_CLASSES)
    note = "" if len(shown) == K else f" (the {len(shown)} of {K} classes with the most errors; all in tables/)"
    plots.plot_per_class(acc[shown].nan_to_num(0.0), [classes[k] for k in shown],
                         run_dir / layout.plot("per_class.png"))
    per_class = Section("Per-class accuracy", [Table(header, [rows[k] for k in shown]),
                                               Image(layout.plot("per_class.png"), f"test accuracy per class{note}")])
    wrong = cells[cells[:, 0] != cells[:, 1]]
    top_pairs = wrong[wrong[:, 2].argsort(descending=True, stable=True)[:TOP_CONFUSED]].tolist()
    pair_rows = [(classes[t], classes[p], n) for t, p, n in top_pairs]
    _write_table(run_dir, "confused_pairs", ("true", "predicted", "count"), pair_rows)
    block, names = dense_confusion(cells, shown), [classes[k] for k in shown]
    plots.plot_confusion(block, names, run_dir / layout.plot("confusion.png"), normalised=False)
    plots.plot_confusion(block, names, run_dir / layout.plot("confusion_normalised.png"), normalised=True,
                         row_totals=totals[shown])
    top = (", ".join(f"{true}→{pred} {count}" for true, pred, count in pair_rows)
           or "none: no test image was misclassified")
    confusion = Section("Confusion", [
        Text(f"Most confused pairs (true→predicted, images): {top}."),
        Table(("true", "predicted", "images"), pair_rows),
        Image(layout.plot("confusion.png"), f"confusion matrix, counts{note}"),
        Image(layout.plot("confusion_normalised.png"), f"confusion matrix, percent of each true class{note}"),
    ])
    return [per_class, confusion]


def precision_recall_section(run_dir: Path, predictions, classes: Sequence[str]) -> Section:
    """Precision, recall and F1 per class (tables/precision_recall.csv has every class), and their macro means."""
    from cifarlab.analysis.metrics import confusion_cells, most_confused_classes, precision_recall_f1

    K = len(classes)
    labels, preds = as_cpu(predictions.labels).long(), as_cpu(predictions.preds).long()
    scores = precision_recall_f1(labels, preds, K)
    header = ("class", "precision", "recall", "F1", "images")
    totals = torch.bincount(labels, minlength=K)
    numbers = [(classes[k], *(round(float(v), 6) for v in scores[k]), int(totals[k])) for k in range(K)]
    shown_rows = [(name, *(f"{100 * v:.1f}%" for v in values), n) for name, *values, n in numbers]
    _write_table(run_dir, "precision_recall", header, numbers, shown_rows)
    shown = most_confused_classes(confusion_cells(labels, preds, K), K, PLOT_CLASSES)
    macro = scores.mean(dim=0).tolist()
    note = "" if len(shown) == K else f" The {len(shown)} of {K} classes with the most errors; all in tables/."
    return Section("Precision, recall and F1", [
        Text(f"Macro averages (each class counts once): precision {100 * macro[0]:.2f}%, recall "
             f"{100 * macro[1]:.2f}%, F1 {100 * macro[2]:.2f}%. Precision: of the images predicted as the class, "
             f"the share that are; recall: of the class's images, the share found.{note}"),
        Table(header, [shown_rows[k] for k in shown])])


def calibration_section(run_dir: Path, predictions) -> Section:
    from cifarlab.analysis.calibration import plot_reliability
    from cifarlab.analysis.metrics import calibration_bins, expected_calibration_error

    probs, labels = as_cpu(predictions.probs), as_cpu(predictions.labels)
    table = calibration_bins(probs, labels, CALIBRATION_BINS)
    ece = expected_calibration_error(probs, labels, CALIBRATION_BINS)
    plot_reliability(table, ece, run_dir / layout.plot("calibration.png"))
    mean_confidence = float((table["confidence"] * table["counts"]).sum() / table["counts"].sum())
    over = "over" if mean_confidence > float(predictions.accuracy) else "under"
    return Section("Calibration", [
        Text(f"Expected calibration error (ECE, {CALIBRATION_BINS} equal-width bins): {100 * ece:.2f}%. The mean "
             f"confidence is {100 * mean_confidence:.2f}% against {100 * float(predictions.accuracy):.2f}% accuracy: "
             f"the model is {over}confident on average."),
        Image(layout.plot("calibration.png"), "reliability diagram: accuracy per confidence bin")])


def _misclassified(predictions, limit: int) -> list[int]:
    return [int(i) for i in as_cpu(predictions.misclassified(limit))] if limit > 0 else []


def gallery_section(run_dir: Path, images, predictions, classes, limit: int) -> Section:
    indices = _misclassified(predictions, limit)
    if not indices:
        return Section("Misclassified images", [Text("No misclassified test images to show.")])
    labels, preds = as_cpu(predictions.labels), as_cpu(predictions.preds)
    probs, losses = as_cpu(predictions.probs), as_cpu(predictions.losses)
    titles = [f"{classes[labels[i]]} → {classes[preds[i]]} (p={float(probs[i, preds[i]]):.2f})\n"
              f"loss {float(losses[i]):.2f}" for i in indices]
    image_grids.plot_gallery(as_cpu(images)[indices], titles, run_dir / layout.plot("misclassified.png"))
    wrong = int((~as_cpu(predictions.correct).bool()).sum())
    text = Text(f"{wrong:,} of {len(labels):,} test images are misclassified; the {len(indices)} with the highest "
                "loss, with the predicted class's probability:")
    return Section("Misclassified images", [text, Image(layout.plot("misclassified.png"), "misclassified test images")])


def gradcam_caption(true_class: str, predicted_class: str, probability: float) -> str:
    """An image's caption in the report's Grad-CAM figure: two lines, so it fits over its panel."""
    return f"true {true_class}\npred {predicted_class} (p={probability:.2f})"


def gradcam_section(run_dir: Path, model, images, predictions, classes, options: dict) -> Section:
    from cifarlab.analysis.gradcam import default_target_layer, gradcam
    from cifarlab.data.normalize import normalize, to_float

    indices = _misclassified(predictions, options["count"])
    if not indices:
        return Section("Grad-CAM", [Text("No misclassified test images to explain.")])
    device = next(model.parameters()).device
    chosen = as_cpu(images)[indices]
    inputs = normalize(to_float(chosen.to(device)), options["mean"], options["std"], channels_last=False)
    labels, preds, probs = as_cpu(predictions.labels), as_cpu(predictions.preds), as_cpu(predictions.probs)
    true, pred = labels[indices], preds[indices]
    layer = options["layer"] or default_target_layer(model, (1, *inputs.shape[1:]))
    run = dict(layer=layer, method=options["method"])
    cam_pred = as_cpu(gradcam(model, inputs, pred.to(device), **run))
    cam_true = as_cpu(gradcam(model, inputs, true.to(device), **run))
    titles = [gradcam_caption(classes[t], classes[p], float(probs[i, p]))
              for i, t, p in zip(indices, true.tolist(), pred.tolist())]
    image_grids.plot_gradcam(chosen, cam_pred, cam_true, titles, run_dir / layout.plot("gradcam.png"))
    text = Text(f"{options['method']} at layer {layer!r} on the {len(indices)} misclassified images "
                "with the highest loss: the image, the map for the predicted class, the map for the true class.")
    return Section("Grad-CAM", [text, Image(layout.plot("gradcam.png"), "Grad-CAM, predicted vs. true class")])
