"""Analyse a finished run: predictions on the test split -> plots, tables, model summary, report.

`analyze_run` is what `train` calls at the end (output.report), through `report_from_run_dir`, and
`report` backs `cifarlab report RUN_DIR`; `ReportOptions` says how much the report shows. Everything
lands in the run directory: `plots/*.png`, `tables/*.csv|md`, `model_summary.txt`, `report.md`, `report.html`.
The sections are made in run_sections.py (the run itself) and prediction_sections.py (the test predictions).
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from cifarlab.analysis import prediction_sections as predicted
from cifarlab.analysis import run_sections as about_run
from cifarlab.analysis.report import write_report
from cifarlab.errors import UserError
from cifarlab.progress import PhaseProgress
from cifarlab.run import layout
from cifarlab.run.layout import MODEL_SUMMARY, report_checkpoint
from cifarlab.run.metrics import read_metrics
from cifarlab.run.summary import read_summary


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
        ("summary", lambda: about_run.summary_section(summary, monitor, predictions, cfg)),
        ("configuration", lambda: about_run.config_section(cfg)),
        ("environment", lambda: about_run.environment_section(summary, dataset)),
        ("curves", lambda: about_run.curves_section(run_dir, metrics, monitor)),
        ("learning rate", lambda: about_run.lr_section(run_dir, metrics)),
        ("range test", lambda: about_run.lr_find_section(run_dir)),
        ("model summary", lambda: about_run.model_section(run_dir, model, tuple(test.images.shape[1:]),
                                                          cfg.train.batch_size)),
        ("classes", lambda: predicted.class_sections(run_dir, predictions, dataset.classes)),
        ("precision and recall", lambda: predicted.precision_recall_section(run_dir, predictions, dataset.classes)),
        ("calibration", lambda: predicted.calibration_section(run_dir, predictions)),
        ("misclassified", lambda: predicted.gallery_section(run_dir, test.images, predictions, dataset.classes,
                                                             options.gallery_size)),
        ("Grad-CAM", lambda: predicted.gradcam_section(run_dir, model, test.images, predictions, dataset.classes,
                                                        gradcam_options)),
        ("augmentation", lambda: about_run.augment_section(run_dir, dataset, cfg)),
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
