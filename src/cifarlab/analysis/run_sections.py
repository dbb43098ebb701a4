"""The run report's sections on the run itself: its summary (summary.json, with the analysed model's test
accuracy), configuration, environment, training curves, learning rate, range test, model summary and
augmentation preview. Each returns a `Section` (analysis/report.py writes them); `analyze_run` (run_report.py)
calls them in the report's order."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from cifarlab.analysis import image_grids, plots
from cifarlab.analysis.prediction_sections import as_cpu
from cifarlab.analysis.report import Bullets, Code, Collapsed, Image, Section, Table, Text
from cifarlab.atomic import atomic_write_text
from cifarlab.config_diff import from_defaults, scalar
from cifarlab.run import layout
from cifarlab.run.layout import MODEL_SUMMARY
from cifarlab.run.metrics import EpochRow
from cifarlab.run.summary import Summary, display

PREVIEW_COUNT = 8
PREVIEW_SEED = 0
TOP_K = 5  # top-5 accuracy is reported where there are more classes than this
SUMMARY_FIELDS = Summary.labels()  # (summary.json key, label in the report), from run/summary.Summary


def summary_section(summary: Optional[Summary], monitor: str, predictions, cfg) -> Section:
    from cifarlab.analysis.metrics import topk_accuracy

    if summary is None:
        blocks = [Text(f"{layout.SUMMARY} was not found: the run has not finished an epoch.")]
    else:
        stored = summary.to_json()  # the fields summary.json holds, in its order
        rows = [(label, summary_cell(key, summary)) for key, label in SUMMARY_FIELDS if key in stored]
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
    count = len(as_cpu(predictions.labels))
    tta = f"with {cfg.train.tta} TTA" if cfg.train.tta else "without TTA"
    top5 = (f" top-1, {100 * topk_accuracy(as_cpu(predictions.probs), as_cpu(predictions.labels), 5):.2f}% top-5"
            if as_cpu(predictions.probs).shape[1] > TOP_K else "")
    blocks.append(Text(f"The model analysed below scores {100 * float(predictions.accuracy):.2f}%{top5} "
                       f"on {count:,} test images ({tta})."))
    return Section("Summary", blocks)


def summary_cell(key: str, summary: Summary) -> str:
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


def config_section(cfg) -> Section:
    """What the run changed from the defaults on top, the whole config.yaml folded below it."""
    changed = [(key, scalar(value), scalar(default)) for key, (value, default) in from_defaults(cfg).items()
               if key != "description"]
    top = (Table(("key", "this run", "default"), changed) if changed
           else Text("Every value is the default."))
    return Section("Configuration", [Text("Values that differ from the defaults (`cifarlab show RECIPE --diff`):"),
                                     top, Collapsed(f"Full configuration ({layout.CONFIG})",
                                                    [Code(cfg.to_yaml(), "yaml")])])


def environment_section(summary: Optional[Summary], dataset) -> Section:
    summary = summary or Summary()
    rows = [(f"{name} version", value) for name, value in summary.versions.items()]
    rows += [("device", summary.device or "—"), ("precision", summary.precision or "—"),
             ("dataset", f"{dataset.name}: {len(dataset.train.labels):,} train / {len(dataset.test.labels):,} test "
                         f"images, {len(dataset.classes)} classes"),
             ("data origin", dataset.origin)]
    return Section("Environment", [Table(("item", "value"), rows)])


def curves_section(run_dir: Path, metrics: list[EpochRow], monitor: str) -> Section:
    if not any(row.kind == "epoch" for row in metrics):
        return Section("Training curves", [Text(f"{layout.METRICS} has no epoch rows yet.")])
    plots.plot_curves(metrics, run_dir / layout.plot("curves.png"), monitor)
    return Section("Training curves", [Image(layout.plot("curves.png"), "train and test loss and accuracy per epoch")])


def lr_section(run_dir: Path, metrics: list[EpochRow]) -> Section:
    lrs = [row.lr for row in metrics if row.lr is not None]
    if not lrs:
        return Section("Learning rate", [Text(f"{layout.METRICS} has no learning-rate values.")])
    plots.plot_lr(metrics, run_dir / layout.plot("lr.png"))
    text = Text(f"Learning rate from {display('lr', lrs[0])} to {display('lr', lrs[-1])}, "
                f"peak {display('lr', max(lrs))}, minimum {display('lr', min(lrs))}.")
    return Section("Learning rate", [text, Image(layout.plot("lr.png"), "learning rate over global steps")])


def lr_find_section(run_dir: Path) -> Optional[Section]:
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


def model_section(run_dir: Path, model, input_shape: tuple, batch_size: int) -> Section:
    from cifarlab.analysis.model_summary import model_summary

    text = model_summary(model, input_shape, batch_size)
    atomic_write_text(run_dir / MODEL_SUMMARY, text + "\n")
    return Section("Model summary", [Text(f"For a batch of {batch_size}; also in {MODEL_SUMMARY}."), Code(text)])


def augment_section(run_dir: Path, dataset, cfg) -> Section:
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
