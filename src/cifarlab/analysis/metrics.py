"""Confusion matrix and what users read off it: per-class accuracy and the most-confused pairs."""
from __future__ import annotations

from typing import Sequence

import torch


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts on the inputs' device; row = true class, column = predicted class."""
    labels, preds = torch.as_tensor(labels).long().flatten(), torch.as_tensor(preds).long().flatten()
    if labels.shape != preds.shape:
        raise ValueError(f"labels and preds differ in length: {labels.numel()} vs {preds.numel()}")
    for name, values in (("labels", labels), ("preds", preds)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must be in 0..{num_classes - 1}, got values in "
                             f"{int(values.min())}..{int(values.max())}")
    flat = torch.bincount(labels * num_classes + preds.to(labels.device), minlength=num_classes * num_classes)
    return flat.view(num_classes, num_classes)


def confusion_cells(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The non-zero cells of the confusion matrix as an (M, 3) int64 tensor of (true, predicted, count), in
    row-major order: M is at most the number of images, so memory and time grow with the test split, not
    with num_classes squared (2,000 classes would be 4 million cells, 100,000 classes 80 GB)."""
    labels, preds = torch.as_tensor(labels).long().flatten().cpu(), torch.as_tensor(preds).long().flatten().cpu()
    codes, counts = torch.unique(labels * num_classes + preds, return_counts=True)  # sorted: row-major
    return torch.stack([codes // num_classes, codes % num_classes, counts], dim=1)


def most_confused_classes(cells: torch.Tensor, num_classes: int, limit: int) -> list[int]:
    """Up to `limit` class indices with the most errors (misclassified images of the class plus images
    misclassified as it), in index order; all classes when there are at most `limit`."""
    if num_classes <= limit:
        return list(range(num_classes))
    wrong = cells[cells[:, 0] != cells[:, 1]]
    errors = torch.bincount(wrong[:, 0], wrong[:, 2], minlength=num_classes)
    errors += torch.bincount(wrong[:, 1], wrong[:, 2], minlength=num_classes)
    return sorted(errors.double().argsort(descending=True, stable=True)[:limit].tolist())


def dense_confusion(cells: torch.Tensor, chosen: Sequence[int]) -> torch.Tensor:
    """The (len(chosen), len(chosen)) block of the confusion matrix over the `chosen` classes."""
    position = {k: i for i, k in enumerate(chosen)}
    block = torch.zeros(len(chosen), len(chosen), dtype=torch.int64)
    for true, pred, count in cells.tolist():
        if true in position and pred in position:
            block[position[true], position[pred]] = count
    return block


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """(K,) float: correct / total per true class; NaN for a class with no examples."""
    confusion = confusion.double()
    return (confusion.diagonal() / confusion.sum(dim=1)).float()


def top_confused(confusion: torch.Tensor, classes: Sequence[str], k: int = 10) -> list[tuple[str, str, int]]:
    """The k largest off-diagonal cells as (true class, predicted class, count), most frequent first;
    ties in row-major order; zero counts are left out."""
    K = confusion.shape[0]
    if len(classes) != K:
        raise ValueError(f"{len(classes)} class names for a {K}x{K} confusion matrix")
    off_diagonal = confusion.clone().cpu()
    off_diagonal.fill_diagonal_(0)
    counts, order = off_diagonal.flatten().sort(descending=True, stable=True)
    keep = (counts > 0).nonzero().numel()
    return [(classes[int(i) // K], classes[int(i) % K], int(n))
            for n, i in zip(counts[:min(k, keep)], order[:min(k, keep)])]


def format_per_class(confusion: torch.Tensor, classes: Sequence[str]) -> str:
    """One line per class, names right-aligned as in the course notebooks: `Accuracy of plane : 87 %`."""
    if len(classes) != confusion.shape[0]:
        raise ValueError(f"{len(classes)} class names for a {confusion.shape[0]}-class confusion matrix")
    width = max(len(name) for name in classes)
    lines = []
    for name, accuracy in zip(classes, per_class_accuracy(confusion).tolist()):
        value = "n/a" if accuracy != accuracy else f"{round(100 * accuracy):d} %"
        lines.append(f"Accuracy of {name:>{width}} : {value}")
    return "\n".join(lines)


# ---------------------------------------------------------------- beyond top-1: what peers' reports show

def topk_accuracy(probs: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of images whose true class is among the `k` highest scores (`probs` (N, K) scores of any
    monotone kind: probabilities, log-probabilities or logits). Ties are broken by `torch.topk`."""
    probs, labels = torch.as_tensor(probs), torch.as_tensor(labels).long().to(torch.as_tensor(probs).device)
    top = probs.topk(min(k, probs.shape[1]), dim=1).indices
    return float((top == labels[:, None]).any(dim=1).double().mean())


def precision_recall_f1(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, 3) float64: precision, recall and F1 per class, from three bincounts (memory grows with K, not K
    squared). A class never predicted has precision 0, one absent from the labels recall 0, and F1 is 0
    where both are 0 (torchmetrics' and scikit-learn's `zero_division=0`)."""
    labels, preds = torch.as_tensor(labels).long().flatten(), torch.as_tensor(preds).long().flatten()
    true_positives = torch.bincount(labels[labels == preds], minlength=num_classes).double()
    predicted = torch.bincount(preds, minlength=num_classes).double()
    actual = torch.bincount(labels, minlength=num_classes).double()
    precision = torch.where(predicted > 0, true_positives / predicted.clamp_min(1), 0.0)
    recall = torch.where(actual > 0, true_positives / actual.clamp_min(1), 0.0)
    both = precision + recall
    f1 = torch.where(both > 0, 2 * precision * recall / both.clamp_min(1e-300), 0.0)
    return torch.stack([precision, recall, f1], dim=1)


def calibration_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict[str, torch.Tensor]:
    """The reliability diagram's data: each image's confidence (its top probability) falls in one of `bins`
    equal-width bins [i/bins, (i+1)/bins) (a confidence of 1 in the last one); per bin the image count,
    the mean confidence and the accuracy (0 for an empty bin). `probs`: (N, K) probabilities."""
    probs = torch.as_tensor(probs).double()
    labels = torch.as_tensor(labels).long().to(probs.device)
    confidence, predicted = probs.max(dim=1)
    index = (confidence * bins).floor().long().clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins).double()
    confidence_sum = torch.bincount(index, confidence, minlength=bins)
    correct_sum = torch.bincount(index, (predicted == labels).double(), minlength=bins)
    return {"edges": torch.linspace(0, 1, bins + 1, dtype=torch.float64), "counts": counts,
            "confidence": confidence_sum / counts.clamp_min(1), "accuracy": correct_sum / counts.clamp_min(1)}


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017, arXiv:1706.04599): the count-weighted mean gap |accuracy - confidence| over
    the equal-width confidence bins of `calibration_bins`; 0 is perfectly calibrated."""
    table = calibration_bins(probs, labels, bins)
    gaps = (table["accuracy"] - table["confidence"]).abs()
    return float((gaps * table["counts"]).sum() / table["counts"].sum())


def beyond_accuracy(batches: Sequence[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                    bins: int = 15) -> dict[str, float]:
    """From (log-probabilities, labels) batches: top-5 accuracy (with more than 5 classes), the macro F1 and
    the expected calibration error, as `cifarlab eval` prints them and the report shows them."""
    scores = torch.cat([s for s, _ in batches]).float().cpu()  # note: a CPU-GPU sync point, once
    labels = torch.cat([y for _, y in batches]).cpu()
    extra = {"test_top5_acc": topk_accuracy(scores, labels, 5)} if num_classes > 5 else {}
    extra["test_macro_f1"] = float(precision_recall_f1(labels, scores.argmax(1), num_classes)[:, 2].mean())
    extra["test_ece"] = expected_calibration_error(scores.exp(), labels, bins)
    return extra
