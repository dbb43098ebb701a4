"""Plots, the run comparison table, the report writer and the end-to-end run analysis."""
from __future__ import annotations

import csv
import importlib
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from _compare import assert_same_state
from torch import nn

from cifarlab.analysis import image_grids, plots
from cifarlab.analysis.compare import compare_runs, expand_run_dirs, read_metrics, to_csv, to_markdown, write_comparison
from cifarlab.analysis.model_summary import model_summary
from cifarlab.analysis.report import SECTION_TITLES, Bullets, Code, Image, Section, Table, Text, anchor, write_report
from cifarlab.errors import UserError
from cifarlab.run.metrics import EpochRow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ("cat", "dog", "frog")
COLUMNS = ("kind", "epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
           "elapsed_seconds", "images_per_second")


# ---------------------------------------------------------------- fabricated runs

def _metrics_rows(epochs: int = 4, steps_per_epoch: int = 5, lr_peak: float = 0.02) -> list[dict]:
    rows = []
    for epoch in range(1, epochs + 1):
        for s in range(steps_per_epoch):
            step = (epoch - 1) * steps_per_epoch + s + 1
            lr = lr_peak * min(1.0, step / (2 * steps_per_epoch))
            rows.append({"kind": "step", "epoch": epoch, "step": step, "lr": lr, "train_loss": 2.0 / step,
                         "train_acc": 0.5 + 0.01 * step})
        rows.append({"kind": "epoch", "epoch": epoch, "step": epoch * steps_per_epoch, "lr": lr,
                     "train_loss": 1.5 / epoch, "train_acc": 0.5 + 0.02 * epoch, "test_loss": 1.6 / epoch,
                     "test_acc": 0.45 + 0.02 * epoch, "elapsed_seconds": 10.0 * epoch, "images_per_second": 1234.5})
    return rows


def _typed(rows: list[dict]) -> list[EpochRow]:
    return [EpochRow.from_dict(row, kind=row["kind"]) for row in rows]


def _write_metrics(run_dir: Path, rows: list[dict]) -> None:
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in COLUMNS})


def _summary(**changes) -> dict:
    summary = {"recipe": "custom-resnet-onecycle", "model": "custom_resnet", "dataset": "cifar10",
               "num_params": 6573130, "epochs_completed": 24, "epochs": 24, "best_test_acc": 0.918, "best_epoch": 23,
               "final_test_acc": 0.9172, "final_test_loss": 0.27, "final_train_acc": 0.96, "best_train_acc": 0.9693,
               "wall_seconds": 3723.0, "train_images_per_second": 5120.0, "lr_peak": 0.0187, "precision": "bf16",
               "device": "cpu", "versions": {"python": "3.11", "torch": "2.13.0", "cifarlab": "0.1.0"},
               "status": "completed"}
    summary.update(changes)
    return summary


def _make_run(root: Path, recipe: str, summary: dict, rows: list[dict]) -> Path:
    run_dir = root / "runs" / recipe / "20240101-120000"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    _write_metrics(run_dir, rows)
    return run_dir


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 2000 and path.read_bytes()[:8] == PNG_MAGIC


def _linked(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


# ---------------------------------------------------------------- plots

@pytest.mark.slow
def test_plots_write_png_files(tmp_path):
    torch.manual_seed(0)
    rows = _typed(_metrics_rows())
    conf = torch.tensor([[8, 1, 1], [3, 6, 1], [0, 2, 8]])
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    cams = torch.rand(6, 16, 16)
    made = [
        plots.plot_curves(rows, tmp_path / "curves.png", "test_acc"),
        plots.plot_lr(rows, tmp_path / "lr.png"),
        plots.plot_per_class(torch.tensor([0.8, 0.6, 0.8]), CLASSES, tmp_path / "per_class.png"),
        plots.plot_confusion(conf, CLASSES, tmp_path / "confusion.png", normalised=False),
        plots.plot_confusion(conf, CLASSES, tmp_path / "confusion_normalised.png", normalised=True),
        image_grids.plot_gallery(images, [f"cat → dog (p=0.{i}7)\nloss 1.2{i}" for i in range(6)],
                                 tmp_path / "gallery.png"),
        image_grids.plot_gradcam(images, cams, cams.flip(-1), [f"true cat, pred dog {i}" for i in range(6)],
                                 tmp_path / "gradcam.png"),
        image_grids.plot_augment_preview(images, images.float() / 255, tmp_path / "augment.png"),
        plots.plot_compare({"a": rows, "b": _typed(_metrics_rows(epochs=3))}, tmp_path / "compare.png"),
    ]
    for path in made:
        assert _is_png(path), path


def test_gallery_and_gradcam_take_grayscale_images_and_coarse_maps(tmp_path):
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    assert _is_png(image_grids.plot_gallery(images, ["1 → 7 (p=0.51)\nloss 0.9"] * 3, tmp_path / "g.png", ncols=2))
    coarse = torch.rand(3, 7, 7)  # a map at the layer's resolution is upsampled to the image
    assert _is_png(image_grids.plot_gradcam(images, coarse, coarse, ["x"] * 3, tmp_path / "c.png"))


def test_gradcam_captions_are_legible_at_the_reports_page_width(tmp_path):
    """The report's 10-image Grad-CAM figure, shrunk to the HTML report's column: captions of 12 px or more."""
    from PIL import Image as PILImage

    from cifarlab.analysis.plots import DPI
    from cifarlab.analysis.prediction_sections import gradcam_caption
    from cifarlab.analysis.report import _CSS

    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    titles = [gradcam_caption("automobile", "airplane", 0.87)] * 10  # CIFAR-10's longest class names
    path = image_grids.plot_gradcam(images, torch.rand(10, 4, 4), torch.rand(10, 4, 4), titles, tmp_path / "c.png")
    page_px = int(re.search(r"max-width: (\d+)px", _CSS).group(1))
    shrink = min(1.0, page_px / PILImage.open(path).size[0])
    caption_px = image_grids.GRADCAM_TITLE_POINTS / 72 * DPI * shrink
    assert caption_px >= 12, f"captions {caption_px:.1f} px at the report's {page_px} px width"


def test_metrics_csv_reads_back_as_typed_rows_that_plot(tmp_path):
    run_dir = _make_run(tmp_path, "r", _summary(), _metrics_rows())
    with (run_dir / "metrics.csv").open() as f:
        raw = list(csv.DictReader(f))
    assert raw[0]["test_acc"] == ""  # step rows leave test columns empty
    parsed = read_metrics(run_dir)
    assert parsed[0].kind == "step" and parsed[0].test_acc is None and parsed[5].test_acc == pytest.approx(0.47)
    assert parsed[5].epoch == int(raw[5]["epoch"]) and read_metrics(run_dir, kind="epoch") == parsed[5::6]
    assert _is_png(plots.plot_curves(parsed, tmp_path / "curves.png", "test_acc"))


def test_a_torn_last_metrics_row_is_skipped_by_every_reader(tmp_path):
    """A kill in the middle of a row leaves half a line; plots, reports and compare must not see it."""
    run_dir = _make_run(tmp_path, "r", _summary(), _metrics_rows())
    whole = read_metrics(run_dir)
    with (run_dir / "metrics.csv").open("a") as f:
        f.write("epoch,2,20")
    assert read_metrics(run_dir) == whole


# ---------------------------------------------------------------- comparison

def test_compare_table_values_come_from_the_run_files(tmp_path):
    first = _make_run(tmp_path, "custom-resnet-onecycle", _summary(), _metrics_rows(lr_peak=0.02))
    second = _make_run(tmp_path, "resnet18-steplr",
                       _summary(recipe="resnet18-steplr", lr_peak=None, best_test_acc=0.8853, best_train_acc=None,
                                epochs_completed=3, epochs=115, wall_seconds=59.6, status="interrupted"),
                       _metrics_rows(epochs=3))
    rows = compare_runs([first, second])
    assert rows[0]["recipe"] == "custom-resnet-onecycle"
    assert rows[0]["run"].endswith("custom-resnet-onecycle/20240101-120000")
    assert rows[0]["lr_peak"] == 0.0187 and rows[0]["best_test_acc"] == 0.918 and rows[0]["best_train_acc"] == 0.9693
    assert rows[0]["lr_min"] == pytest.approx(0.002)  # from metrics.csv: first logged step
    assert rows[1]["best_train_acc"] == pytest.approx(0.56)  # not in summary: best epoch row of metrics.csv
    markdown = to_markdown(rows)
    for text in ("91.80%", "96.93%", "1.87E-02", "88.53%", "3/115", "1:02:03", "5,120", "interrupted", "—"):
        assert text in markdown
    with to_csv(rows, tmp_path / "t.csv").open() as f:
        back = list(csv.DictReader(f))
    assert float(back[1]["best_test_acc"]) == 0.8853 and back[1]["lr_peak"] == ""
    files = write_comparison([first, second], tmp_path / "cmp")
    assert "88.53%" in files.markdown.read_text() and _is_png(files.plot) and files.csv.is_file()


def test_compare_skips_mlflows_copy_of_a_runs_files(tmp_path):
    """An MLflow-enabled run keeps copies of summary.json and metrics.csv under its mlruns/: one run, one row."""
    run_dir = _make_run(tmp_path, "smoke", _summary(), _metrics_rows())
    copy = run_dir / "mlruns" / "0" / "3f2a" / "artifacts"
    copy.mkdir(parents=True)
    for name in ("summary.json", "metrics.csv"):
        (copy / name).write_bytes((run_dir / name).read_bytes())
    for given in (tmp_path / "runs", str(tmp_path / "runs" / "**")):
        assert expand_run_dirs([given]) == [run_dir]


def test_compare_names_a_directory_without_summary(tmp_path):
    good = _make_run(tmp_path, "a", _summary(), _metrics_rows())
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    with pytest.raises(UserError, match="not-a-run.*summary.json"):
        compare_runs([good, empty])


# ---------------------------------------------------------------- report writer

def _all_sections(run_dir: Path) -> list[Section]:
    plots.plot_curves(_typed(_metrics_rows()), run_dir / "plots" / "curves.png", "test_acc")
    blocks = {
        "Summary": [Table(("field", "value"), [("best_test_acc", "91.80%"), ("note", "<b>a & b</b>")])],
        "Configuration": [Code("optim:\n  lr: 0.1\n", "yaml")],
        "Model summary": [Code("Total params: 10")],
        "Confusion": [Text("Most confused: dog→cat 66."), Bullets(["x < y"])],
    }
    return [Section(title, blocks.get(title, [Image("plots/curves.png", f"{title} figure")]))
            for title in SECTION_TITLES]


def test_write_report_has_every_section_and_every_link_exists(tmp_path):
    run_dir = tmp_path / "runs" / "r" / "20240101-120000"
    sections = _all_sections(run_dir)
    md_path, html_path = write_report(run_dir, sections)
    markdown = md_path.read_text()
    for title in SECTION_TITLES:
        assert f"\n## {title}\n" in markdown
    links = _linked(markdown)
    assert links and all((run_dir / link).is_file() and not Path(link).is_absolute() for link in links)
    assert "dog→cat 66" in markdown and "```yaml" in markdown

    page = html_path.read_text()
    assert page.count("data:image/png;base64,") == len(links)
    assert "<script" not in page.lower() and "plots/curves.png" not in page  # embedded, not linked
    assert "&lt;b&gt;a &amp; b&lt;/b&gt;" in page and "<b>a" not in page
    assert all(f'id="{anchor(title)}">{title}</h2>' in page for title in SECTION_TITLES)


def test_write_report_refuses_a_missing_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="plots/nope.png"):
        write_report(tmp_path, [Section("Training curves", [Image("plots/nope.png", "missing")])])


# ---------------------------------------------------------------- model summary

class TinyNet(nn.Module):
    def __init__(self, channels: int = 3, num_classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


def test_model_summary_is_torchinfo_table_and_leaves_model_alone():
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    text = model_summary(model, (3, 8, 8), batch_size=512)
    for needle in ("Output Shape", "Param #", "Mult-Adds", "[512, 16, 8, 8]",
                   f"Total params: {sum(p.numel() for p in model.parameters()):,}",
                   "Total mult-adds (M)", "Estimated Total Size (MB)"):
        assert needle in text, needle
    assert "Units." not in text
    assert_same_state(model.state_dict(), before)
    assert next(model.parameters()).device.type == "cpu" and model.training


# ---------------------------------------------------------------- end to end

def _fake_modules() -> dict[str, types.ModuleType]:
    """Stand-ins, by the agreed contracts, for analysis modules another engineer has not landed yet."""
    fakes = {}

    def predict(model, images_uint8, labels, mean, std, batch_size=1000, autocast=None, tta=False, device=None,
                channels_last=True):
        from cifarlab.data.normalize import normalize, to_float
        with torch.inference_mode():
            probs = model(normalize(to_float(images_uint8), mean, std)).softmax(dim=1)
        losses = -probs[torch.arange(len(labels)), labels].log()
        preds = probs.argmax(dim=1)
        correct = preds == labels
        return types.SimpleNamespace(probs=probs, labels=labels, losses=losses, preds=preds, correct=correct,
                                     accuracy=correct.float().mean().item(),
                                     misclassified=lambda limit: [i for i in losses.argsort(descending=True).tolist()
                                                                  if not correct[i]][:limit])

    def gradcam(model, inputs, target_classes, layer=None, method="gradcam"):
        N, _, H, W = inputs.shape
        return torch.linspace(0, 1, H * W).view(1, H, W).expand(N, H, W)

    def confusion_matrix(labels, preds, K):
        return torch.bincount(labels * K + preds, minlength=K * K).view(K, K)

    def top_confused(conf, classes, k):
        off = conf.clone().fill_diagonal_(0)
        pairs = [(classes[i // len(classes)], classes[i % len(classes)], int(off.view(-1)[i]))
                 for i in off.view(-1).argsort(descending=True).tolist()]
        return [p for p in pairs if p[2] > 0][:k]

    for name, functions in (("predict", [predict]), ("gradcam", [gradcam]),
                            ("metrics", [confusion_matrix, top_confused])):
        module = types.ModuleType(f"cifarlab.analysis.{name}")
        for function in functions:
            setattr(module, function.__name__, function)
        fakes[name] = module
    return fakes


@pytest.fixture
def analysis_modules(monkeypatch):
    for name, fake in _fake_modules().items():
        try:
            importlib.import_module(f"cifarlab.analysis.{name}")
        except ImportError:
            monkeypatch.setitem(sys.modules, f"cifarlab.analysis.{name}", fake)


@pytest.mark.slow
def test_analyze_run_writes_every_linked_file(tmp_path, analysis_modules):
    sources = pytest.importorskip("cifarlab.data.sources", reason="cifarlab.data.sources not written yet")
    from cifarlab.analysis.run_report import ReportOptions, analyze_run
    from cifarlab.config import Config

    g = torch.Generator().manual_seed(0)
    def split(n):
        return sources.Split(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g),
                             torch.randint(0, 3, (n,), generator=g))

    dataset = sources.Dataset("tiny", split(16), split(30), CLASSES, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "test")
    cfg = Config.model_validate({"name": "tiny", "data": {"dataset": "synthetic"},
                                 "augment": {"crop": {"padding": 2}, "flip": {}, "cutout": {"size": 4}},
                                 "train": {"batch_size": 4, "eval_batch_size": 16}})
    run_dir = _make_run(tmp_path, "tiny", _summary(recipe="tiny"), _metrics_rows())
    (run_dir / "lr_find.json").write_text(json.dumps({"lrs": [1e-4, 1e-3, 1e-2], "losses": [2, 1, 3],
                                                      "smoothed": [2, 1.5, 2], "steepest_lr": 1e-3,
                                                      "valley_lr": 2e-3, "stopped_early": True}))
    plots.plot_lr(_typed(_metrics_rows()), run_dir / "plots" / "lr_find.png")  # stands in for the range test's plot

    torch.manual_seed(0)
    options = ReportOptions(gallery_size=6, gradcam_count=4, gradcam_layer="features.3")
    md_path = analyze_run(run_dir, TinyNet().eval(), dataset, cfg, options=options)
    markdown = md_path.read_text()
    for title in SECTION_TITLES:
        assert f"\n## {title}\n" in markdown, title
    links = _linked(markdown)
    assert len(links) == 10 and all(_is_png(run_dir / link) for link in links)
    assert "plots/calibration.png" in links and "Expected calibration error" in markdown
    with (run_dir / "tables" / "precision_recall.csv").open() as f:
        assert [row["class"] for row in csv.DictReader(f)] == list(CLASSES)
    assert "top-5" not in markdown  # 3 classes: top-5 would be 100%
    assert "plots/lr_find.png" in links and "1.00E-03" in markdown
    page = (run_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(links) and "<script" not in page.lower()
    assert "Total params" in (run_dir / "model_summary.txt").read_text()
    with (run_dir / "tables" / "per_class.csv").open() as f:
        per_class = list(csv.DictReader(f))
    assert [row["class"] for row in per_class] == list(CLASSES)
    assert sum(int(row["total"]) for row in per_class) == 30
    assert (run_dir / "tables" / "confused_pairs.csv").is_file() and (run_dir / "tables" / "per_class.md").is_file()
    assert "→" in markdown and "91.80%" in markdown


def test_report_from_run_dir_names_what_is_missing(tmp_path):
    from cifarlab.analysis.run_report import report_from_run_dir

    with pytest.raises(UserError, match="does not exist"):
        report_from_run_dir(tmp_path / "nope")
    run_dir = _make_run(tmp_path, "r", _summary(), _metrics_rows())
    with pytest.raises(UserError, match="checkpoints/best.pt or checkpoints/last.pt"):
        report_from_run_dir(run_dir)
