"""Analyse a finished run: predictions on the test split -> plots, tables, model summary, report.

`analyze_run` is what `train` calls at the end (output.report), through `report_from_run_dir`, and
`report` backs `cifarlab report RUN_DIR`; `ReportOptions` says how much the report shows. Everything
lands in the run directory: `plots/*.png`, `tables/*.csv|md`, `model_summary.txt`, `report.md`, `report.html`.
"""
from __future__ import annotations

import csv
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from cifarlab.analysis import image_grids, plots
from cifarlab.analysis.report import Bullets, Code, Collapsed, Image, Section, Table, Text, markdown_table, write_report
from cifarlab.atomic import atomic_write, atomic_write_text
from cifarlab.config_diff import from_defaults, scalar
from cifarlab.errors import UserError
from cifarlab.progress import PhaseProgress
from cifarlab.run import layout
from cifarlab.run.layout import MODEL_SUMMARY, report_checkpoint
from cifarlab.run.metrics import EpochRow, read_metrics
from cifarlab.run.summary import Summary, display, read_summary

PREVIEW_COUNT = 8
PREVIEW_SEED = 0
TOP_CONFUSED = 10
PLOT_CLASSES = 30  # beyond this many classes, plots show the most-confused ones
TOP_K = 5  # top-5 accuracy is reported where there are more classes than this
CALIBRATION_BINS = 15  # torchmetrics' and Guo et al.'s default
SUMMARY_FIELDS = Summary.labels()  # (summary.json key, label in the report), from run/summary.Summary


@dataclass(frozen=True)
class ReportOptions:
    """How much the report shows: the misclassified gallery's size and the Grad-CAM figure's images
    (`gradcam_count` misclassified images, highest loss first), layer (None: the deepest with a 4x4 or
    larger output) and method ("gradcam" or "gradcam++")."""
    gallery_size: int = 20
    gradcam_count: int = 10
    gradcam_layer: Optional[str] = None
    gradcam_method: str = "gradcam"


def analyze_run(run_dir, model, dataset, cfg, *, autocast: Callable = nullcontext, device="cpu",
                options: ReportOptions = ReportOptions()) -> Path:
    """Write every plot, table and the report for `model` (trained by `cfg`) on `dataset`, evaluated as in
    training (`autocast` of the run's precision, the recipe's TTA); returns report.md."""
    from cifarlab.use.predict import predict_batch

    run_dir = Path(run_dir)
    summary = read_summary(run_dir, required=False)
    metrics = read_metrics(run_dir)
    # best.pt's metric as the run recorded it (summary.json's selected_by; older runs: what their config says)
    monitor = (summary.selected_by if summary is not None else None) \
        or cfg.checkpoint.selecting_metric(has_validation=cfg.data.val_split is not None)
    mean, std = dataset.mean, dataset.std
    test = dataset.test
    gradcam_options = dict(count=options.gradcam_count, layer=options.gradcam_layer, method=options.gradcam_method,
                           mean=mean, std=std)
    predictions = None  # the first step's; the sections below read it when they run
    steps = [  # (what, make): progress names each as it finishes (minutes in all on a busy CPU)
        ("summary", lambda: _summary_section(summary, monitor, predictions, cfg)),
        ("configuration", lambda: _config_section(cfg)),
        ("environment", lambda: _environment_section(summary, dataset)),
        ("curves", lambda: _curves_section(run_dir, metrics, monitor)),
        ("learning rate", lambda: _lr_section(run_dir, metrics)),
        ("range test", lambda: _lr_find_section(run_dir)),
        ("model summary", lambda: _model_section(run_dir, model, tuple(test.images.shape[1:]), cfg.train.batch_size)),
        ("classes", lambda: _class_sections(run_dir, predictions, dataset.classes)),
        ("precision and recall", lambda: _precision_recall_section(run_dir, predictions, dataset.classes)),
        ("calibration", lambda: _calibration_section(run_dir, predictions)),
        ("misclassified", lambda: _gallery_section(run_dir, test.images, predictions, dataset.classes,
                                                   options.gallery_size)),
        ("Grad-CAM", lambda: _gradcam_section(run_dir, model, test.images, predictions, dataset.classes,
                                              gradcam_options)),
        ("augmentation", lambda: _augment_section(run_dir, dataset, cfg)),
    ]
    sections = []
    with PhaseProgress("report", 1 + len(steps), "steps", cfg.output.progress,
                       start_text=f"{len(test.labels):,} test images") as progress:
        predictions = predict_batch(model, test.images, test.labels, mean, std, batch_size=cfg.train.eval_batch_size,
                                    autocast=autocast, tta=cfg.train.tta, device=device,
                                    channels_last=cfg.train.channels_last, progress=cfg.output.progress)
        progress.update(text="predictions")
        for what, make in steps:
            made = make()
            sections += made if isinstance(made, list) else [made]
            progress.update(text=what)
    md_path, _ = write_report(run_dir, [s for s in sections if s is not None])
    return md_path


def report(run_dir, data_dir=None, options: ReportOptions = ReportOptions()) -> Path:
    """`cifarlab report RUN_DIR`: the report of a run directory made again (`report_from_run_dir`)."""
    if not (Path(run_dir) / layout.CONFIG).exists():
        raise UserError(f"{run_dir} is not a run directory (no {layout.CONFIG})")
    return report_from_run_dir(run_dir, data_dir=data_dir, options=options)


def report_from_run_dir(run_dir, dataset=None, device: str = "auto", data_dir=None,
                        options: ReportOptions = ReportOptions()) -> Path:
    """The report of a run: best.pt (else last.pt) on the run's own test split (`dataset`, when the
    caller has it loaded already; else looked up under `data_dir`, see `run_test_data`), evaluated
    with the run's precision and TTA, then `analyze_run`."""
    from cifarlab.use.evaluate import run_test_data
    from cifarlab.use.load import load_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {str(run_dir)!r} does not exist")
    checkpoint = report_checkpoint(run_dir)
    if checkpoint is None:
        raise UserError(f"{str(run_dir)!r} has no {layout.CHECKPOINTS}/{layout.BEST} or "
                        f"{layout.CHECKPOINTS}/{layout.LAST} to report on")
    check_writable(run_dir)
    loaded = load_model(checkpoint, device=device)
    try:
        return analyze_run(run_dir, loaded.module, dataset or run_test_data(loaded, data_dir), loaded.config,
                           autocast=loaded.precision.autocast, device=loaded.device, options=options)
    except OSError as err:  # read-only or full disk half-way: one line, not a traceback
        where = f" ({err.filename})" if err.filename else ""
        raise UserError(f"cannot write the report into {run_dir}: {err.strerror or err}{where}") from None


REPORT_FOLDERS = (layout.PLOTS, layout.TABLES)
REPORT_FILES = (MODEL_SUMMARY, layout.REPORT_MD, layout.REPORT_HTML)


def check_writable(run_dir: Path) -> None:
    """Refuse, before any work, a run directory the report cannot be written into."""
    for name in REPORT_FOLDERS:
        if (run_dir / name).exists() and not (run_dir / name).is_dir():
            raise UserError(f"cannot write the report into {run_dir}: {run_dir / name} is a file, not a folder")
    for name in REPORT_FILES:
        if (run_dir / name).is_dir():
            raise UserError(f"cannot write the report into {run_dir}: {run_dir / name} is a folder, not a file")
    if not os.access(run_dir, os.W_OK):
        raise UserError(f"cannot write the report into {run_dir}: the run directory is read-only")


# ---------------------------------------------------------------- helpers

def _cpu(tensor: Any) -> torch.Tensor:
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


# ---------------------------------------------------------------- sections

def _summary_section(summary: Optional[Summary], monitor: str, predictions, cfg) -> Section:
    from cifarlab.analysis.metrics import topk_accuracy

    if summary is None:
        blocks = [Text(f"{layout.SUMMARY} was not found: the run has not finished an epoch.")]
    else:
        stored = summary.to_json()  # the fields summary.json holds, in its order
        rows = [(label, _summary_cell(key, summary)) for key, label in SUMMARY_FIELDS if key in stored]
        blocks = [Table(("field", "value"), rows)]
        if summary.status not in (None, "completed"):
            blocks.insert(0, Text(f"Warning: this run is {summary.status}; the numbers below are partial."))
        split = "a validation split taken from the training images" if monitor.startswith("val_") else "the test split"
        final = summary.final_test_acc
        last = f" The last epoch's test accuracy is {100 * final:.2f}%." if final is not None else ""
        if monitor.startswith("test_"):
            blocks.append(Text(f"{layout.BEST} was chosen by {monitor} on the test split: selected on the test split "
                               f"(optimistic), its test accuracy overstates what new images would score.{last}"))
        else:
            blocks.append(Text(f"{layout.BEST} was chosen by {monitor} on {split}."
                               + (" The test split only reports." if monitor.startswith("val_") else "") + last))
    count = len(_cpu(predictions.labels))
    tta = f"with {cfg.train.tta} TTA" if cfg.train.tta else "without TTA"
    top5 = (f" top-1, {100 * topk_accuracy(_cpu(predictions.probs), _cpu(predictions.labels), 5):.2f}% top-5"
            if _cpu(predictions.probs).shape[1] > TOP_K else "")
    blocks.append(Text(f"The model analysed below scores {100 * float(predictions.accuracy):.2f}%{top5} "
                       f"on {count:,} test images ({tta})."))
    return Section("Summary", blocks)


def _summary_cell(key: str, summary: Summary) -> str:
    """A summary value as the report shows it; the peak LR says where it came from (`lr_peak_source`)."""
    value = getattr(summary, key)
    if key == "mfu" and value is not None:
        peak = summary.peak_flops
        of_peak = f" of {peak / 1e12:.3g} TFLOP/s ({summary.peak_flops_source})" if peak else ""
        return f"{display(key, value)}{of_peak}"
    text = display(key, value)
    if key != "lr_peak":
        return text
    source = summary.lr_peak_source
    if not source:
        return f"{text} (source not recorded)"
    if source.startswith("range test"):
        return f"{text}, found by the {source}"
    return f"{text}, as configured ({source})"


def _config_section(cfg) -> Section:
    """What the run changed from the defaults on top, the whole config.yaml folded below it."""
    changed = [(key, scalar(value), scalar(default)) for key, (value, default) in from_defaults(cfg).items()
               if key != "description"]
    top = (Table(("key", "this run", "default"), changed) if changed
           else Text("Every value is the default."))
    return Section("Configuration", [Text("Values that differ from the defaults (`cifarlab show RECIPE --diff`):"),
                                     top, Collapsed(f"Full configuration ({layout.CONFIG})",
                                                    [Code(cfg.to_yaml(), "yaml")])])


def _environment_section(summary: Optional[Summary], dataset) -> Section:
    summary = summary or Summary()
    rows = [(f"{name} version", value) for name, value in summary.versions.items()]
    rows += [("device", summary.device or "—"), ("precision", summary.precision or "—"),
             ("dataset", f"{dataset.name}: {len(dataset.train.labels):,} train / {len(dataset.test.labels):,} test "
                         f"images, {len(dataset.classes)} classes"),
             ("data origin", dataset.origin)]
    return Section("Environment", [Table(("item", "value"), rows)])


def _curves_section(run_dir: Path, metrics: list[EpochRow], monitor: str) -> Section:
    if not any(row.kind == "epoch" for row in metrics):
        return Section("Training curves", [Text(f"{layout.METRICS} has no epoch rows yet.")])
    plots.plot_curves(metrics, run_dir / layout.plot("curves.png"), monitor)
    return Section("Training curves", [Image(layout.plot("curves.png"), "train and test loss and accuracy per epoch")])


def _lr_section(run_dir: Path, metrics: list[EpochRow]) -> Section:
    lrs = [row.lr for row in metrics if row.lr is not None]
    if not lrs:
        return Section("Learning rate", [Text(f"{layout.METRICS} has no learning-rate values.")])
    plots.plot_lr(metrics, run_dir / layout.plot("lr.png"))
    text = Text(f"Learning rate from {display('lr', lrs[0])} to {display('lr', lrs[-1])}, "
                f"peak {display('lr', max(lrs))}, minimum {display('lr', min(lrs))}.")
    return Section("Learning rate", [text, Image(layout.plot("lr.png"), "learning rate over global steps")])


def _lr_find_section(run_dir: Path) -> Optional[Section]:
    from cifarlab.lr_range.finder import read_range_test

    result = read_range_test(run_dir / layout.LR_FIND)
    if result is None:
        return None
    names = {"minimum": "minimum of the lag-free smoothed loss", "steepest": "steepest descent", "valley": "valley"}
    lrs = result.suggestions()
    suggestions = [f"{label}: {display('lr', lrs[rule])}" + (" (chosen)" if rule == result.rule else "")
                   for rule, label in names.items()]
    if result.stopped_early:
        suggestions.append("the test stopped early when the loss diverged")
    blocks = [Text(f"Range test over {len(result.lrs)} learning rates; suggestions:"), Bullets(suggestions)]
    if (run_dir / layout.plot(layout.LR_FIND_PLOT)).is_file():
        blocks.append(Image(layout.plot(layout.LR_FIND_PLOT), "loss against learning rate in the range test"))
    return Section("LR range test", blocks)


def _model_section(run_dir: Path, model, input_shape: tuple, batch_size: int) -> Section:
    from cifarlab.analysis.model_summary import model_summary

    text = model_summary(model, input_shape, batch_size)
    atomic_write_text(run_dir / MODEL_SUMMARY, text + "\n")
    return Section("Model summary", [Text(f"For a batch of {batch_size}; also in {MODEL_SUMMARY}."), Code(text)])


def _class_sections(run_dir: Path, predictions, classes: Sequence[str]) -> list[Section]:
    """Per-class accuracy and confusion. Tables in tables/ are complete (every class; every non-zero
    confusion cell in confusion.csv); beyond PLOT_CLASSES classes the plots and the report's own tables show
    the classes with the most errors, so memory and time grow with the test split, not with classes squared
    (a 300-class report peaked at 16.6 GB drawing a 300x300 matrix with every label)."""
    from cifarlab.analysis.metrics import confusion_cells, dense_confusion, most_confused_classes

    K = len(classes)
    labels, preds = _cpu(predictions.labels).long(), _cpu(predictions.preds).long()
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


def _precision_recall_section(run_dir: Path, predictions, classes: Sequence[str]) -> Section:
    """Precision, recall and F1 per class (tables/precision_recall.csv has every class), and their macro means."""
    from cifarlab.analysis.metrics import confusion_cells, most_confused_classes, precision_recall_f1

    K = len(classes)
    labels, preds = _cpu(predictions.labels).long(), _cpu(predictions.preds).long()
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


def _calibration_section(run_dir: Path, predictions) -> Section:
    from cifarlab.analysis.calibration import plot_reliability
    from cifarlab.analysis.metrics import calibration_bins, expected_calibration_error

    probs, labels = _cpu(predictions.probs), _cpu(predictions.labels)
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
    return [int(i) for i in _cpu(predictions.misclassified(limit))] if limit > 0 else []


def _gallery_section(run_dir: Path, images, predictions, classes, limit: int) -> Section:
    indices = _misclassified(predictions, limit)
    if not indices:
        return Section("Misclassified images", [Text("No misclassified test images to show.")])
    labels, preds = _cpu(predictions.labels), _cpu(predictions.preds)
    probs, losses = _cpu(predictions.probs), _cpu(predictions.losses)
    titles = [f"{classes[labels[i]]} → {classes[preds[i]]} (p={float(probs[i, preds[i]]):.2f})\n"
              f"loss {float(losses[i]):.2f}" for i in indices]
    image_grids.plot_gallery(_cpu(images)[indices], titles, run_dir / layout.plot("misclassified.png"))
    wrong = int((~_cpu(predictions.correct).bool()).sum())
    text = Text(f"{wrong:,} of {len(labels):,} test images are misclassified; the {len(indices)} with the highest "
                "loss, with the predicted class's probability:")
    return Section("Misclassified images", [text, Image(layout.plot("misclassified.png"), "misclassified test images")])


def gradcam_caption(true_class: str, predicted_class: str, probability: float) -> str:
    """An image's caption in the report's Grad-CAM figure: two lines, so it fits over its panel."""
    return f"true {true_class}\npred {predicted_class} (p={probability:.2f})"


def _gradcam_section(run_dir: Path, model, images, predictions, classes, options: dict) -> Section:
    from cifarlab.analysis.gradcam import default_target_layer, gradcam
    from cifarlab.data.normalize import normalize, to_float

    indices = _misclassified(predictions, options["count"])
    if not indices:
        return Section("Grad-CAM", [Text("No misclassified test images to explain.")])
    device = next(model.parameters()).device
    chosen = _cpu(images)[indices]
    inputs = normalize(to_float(chosen.to(device)), options["mean"], options["std"], channels_last=False)
    labels, preds, probs = _cpu(predictions.labels), _cpu(predictions.preds), _cpu(predictions.probs)
    true, pred = labels[indices], preds[indices]
    layer = options["layer"] or default_target_layer(model, (1, *inputs.shape[1:]))
    run = dict(layer=layer, method=options["method"])
    cam_pred = _cpu(gradcam(model, inputs, pred.to(device), **run))
    cam_true = _cpu(gradcam(model, inputs, true.to(device), **run))
    titles = [gradcam_caption(classes[t], classes[p], float(probs[i, p]))
              for i, t, p in zip(indices, true.tolist(), pred.tolist())]
    image_grids.plot_gradcam(chosen, cam_pred, cam_true, titles, run_dir / layout.plot("gradcam.png"))
    text = Text(f"{options['method']} at layer {layer!r} on the {len(indices)} misclassified images "
                "with the highest loss: the image, the map for the predicted class, the map for the true class.")
    return Section("Grad-CAM", [text, Image(layout.plot("gradcam.png"), "Grad-CAM, predicted vs. true class")])


def _augment_section(run_dir: Path, dataset, cfg) -> Section:
    from cifarlab.data.augment import build_augment
    from cifarlab.data.mix import build_mix
    from cifarlab.data.normalize import to_float

    C, H = dataset.train.images.shape[1:3]
    aug = build_augment(cfg.augment, H, C, seed=cfg.seed)
    mixing = build_mix(cfg.augment.mixup, cfg.augment.cutmix, dataset.num_classes)
    mix_lines = [f"{line} (on whole batches, with the targets; not in the preview)" for line in mixing.describe()] \
        if mixing is not None else []
    if not aug.describe() and not mix_lines:
        return Section("Augmentation preview", [Text("The recipe uses no augmentation: images are only normalised.")])
    count = min(PREVIEW_COUNT, len(dataset.train.labels))
    before = dataset.train.images[:count].cpu()
    generator = torch.Generator().manual_seed(PREVIEW_SEED)
    after = aug(to_float(before), generator, indices=torch.arange(count), epoch=0)
    image_grids.plot_augment_preview(before, after, run_dir / layout.plot("augment.png"))
    return Section("Augmentation preview", [
        Text("Applied to training images, in this order:"),
        Bullets(aug.describe() + mix_lines),
        Image(layout.plot("augment.png"), "training images before and after augmentation"),
    ])
