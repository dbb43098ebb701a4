"""A validation split: stratified, seeded, disjoint from training; it (not the test split) selects best.pt."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from cifarlab.cli import main
from cifarlab.data.sources import Split
from cifarlab.data.split import stratified_split
from cifarlab.errors import UserError

COMMON = ["train.device=cpu", "train.threads=1", "output.tensorboard=true", "output.progress=lines", "train.epochs=3"]


def _split(counts=(50, 30, 20)):
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    images = torch.arange(len(labels), dtype=torch.int64).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    return Split((images % 256).to(torch.uint8).contiguous(), labels)


@pytest.mark.parametrize("size, expected", [(0.1, (5, 3, 2)), (10, (5, 3, 2)), (0.25, (13, 7, 5))])
def test_stratified_by_class_and_disjoint(size, expected):
    split = _split()
    train, val = stratified_split(split, size, seed=0)
    assert tuple(torch.bincount(val.labels).tolist()) == expected
    assert len(train.labels) + len(val.labels) == 100
    ids = [set(s.images[:, 0, 0, 0].tolist()) for s in (train, val)]  # each image's pixel is its index
    assert not ids[0] & ids[1]


def test_seeded_same_seed_same_split_other_seed_other_split():
    split = _split()
    a, b, c = (stratified_split(split, 0.2, seed=s)[1] for s in (1, 1, 2))
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


@pytest.mark.parametrize("size", [100, 0.001, 500])
def test_a_split_that_leaves_nothing_is_one_clear_error(size):
    with pytest.raises(UserError, match="data.val_split"):
        stratified_split(_split(), size, seed=0)


@pytest.mark.slow
def test_validation_selects_best_pt_and_is_logged_everywhere(tmp_path, capsys):
    assert main(["train", "smoke", f"output.dir={tmp_path}", "data.val_split=0.125", "output.report=true",
                 *COMMON]) == 0
    (run_dir,) = (tmp_path / "smoke").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["selected_by"] == "val_acc" and summary["val_images"] == 64
    with open(run_dir / "metrics.csv", newline="") as handle:
        epochs = [row for row in csv.DictReader(handle) if row["kind"] == "epoch"]
    val = [float(row["val_acc"]) for row in epochs]
    best = max(range(len(val)), key=lambda i: (val[i], -i))
    assert summary["best_epoch"] == best + 1 and summary["best_val_acc"] == pytest.approx(val[best], abs=1e-6)
    assert summary["best_test_acc"] == pytest.approx(float(epochs[best]["test_acc"]), abs=1e-6)
    err = capsys.readouterr().err
    assert "Validation set: Average loss" in err and "chosen by val_acc" in err
    assert "best.pt was chosen by val_acc on a validation split" in (run_dir / "report.md").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert "epoch/val_acc" in EventAccumulator(str(run_dir / "tb")).Reload().Tags()["scalars"]


def test_monitoring_validation_without_a_split_is_refused(tmp_path, capsys):
    assert main(["train", "smoke", f"output.dir={tmp_path}", "checkpoint.monitor=val_acc", *COMMON]) == 2
    assert "needs a validation split" in capsys.readouterr().err
    assert not (tmp_path / "smoke").exists() or not any((tmp_path / "smoke").iterdir())


# (images per class, data.val_split, validation images per class): small classes beside large ones
UNBALANCED = [
    ((400, 4, 4), 41, (39, 1, 1)),  # proportional rounding gave (41, 0, 0): a one-class split, val_acc 1.0
    ((600, 5, 5), 0.1, (59, 1, 1)),
    ((1000, 2, 2, 1), 100, (98, 1, 1, 0)),  # a class of 1 image keeps it for training (and a warning says so)
    ((10, 1), 5, (5, 0)),
    ((30, 2, 2, 2, 2, 2), 6, (1, 1, 1, 1, 1, 1)),
    ((100,) * 6, 4, (1, 1, 1, 1, 0, 0)),  # fewer images than classes: one each for the first (with a warning)
    ((3, 3, 3), 6, (2, 2, 2)),  # at most all but one image of a class
]


@pytest.mark.parametrize("counts, size, expected", UNBALANCED, ids=[str(case[0][:4]) for case in UNBALANCED])
def test_every_class_with_two_images_gets_a_validation_image_and_keeps_a_training_one(counts, size, expected):
    split = _split(counts)
    split.images[:, 0, 1, 1] = torch.arange(len(split.labels)) // 256  # with [0, 0, 0]: each image's index
    train, val = stratified_split(split, size, seed=0)
    assert tuple(torch.bincount(val.labels, minlength=len(counts)).tolist()) == expected
    assert torch.bincount(train.labels, minlength=len(counts)).min() >= 1
    ids = [set((s.images[:, 0, 0, 0].long() + 256 * s.images[:, 0, 1, 1].long()).tolist()) for s in (train, val)]
    assert not ids[0] & ids[1] and len(ids[0]) + len(ids[1]) == sum(counts)


def _unbalanced_arrays(counts):
    import numpy as np

    labels = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    images = np.random.default_rng(0).integers(0, 256, (len(labels), 3, 8, 8), dtype=np.uint8)
    return images, labels, images[:6], labels[:6], [f"class{k}" for k in range(len(counts))]


@pytest.mark.parametrize("val_split, counts, warning", [
    ("auto", (400, 4, 4), None),  # auto: sized from the average (> 20 a class) but every class measured
    ("0.1", (200, 30, 1), "1 class(es) have no validation image ('class2'): they have a single image"),
    ("2", (50, 50, 50), "1 class(es) have no validation image ('class2'): data.val_split=2 made 2 validation "
                        "images for 3 classes with 2 or more images; use a count of at least 3"),
])
def test_a_run_says_which_classes_its_validation_split_leaves_out(val_split, counts, warning, capsys):
    from cifarlab.config import load_config
    from cifarlab.data.arrays import as_dataset
    from cifarlab.trainer.sizing import size_to_data

    cfg = load_config("folder", [f"data.val_split={val_split}"])
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"dataset": "arrays"})})
    _, dataset = size_to_data(cfg, as_dataset(_unbalanced_arrays(counts)))
    err = capsys.readouterr().err
    measured = set(dataset.val.labels.tolist())
    if warning is None:
        assert measured == set(range(len(counts))) and "validation image" not in err
    else:
        lines = [line for line in err.splitlines() if "validation image" in line]
        assert len(lines) == 1 and warning in lines[0] and "picked on the other classes' val_acc" in lines[0]
        assert len(measured) == len(counts) - 1


# ---------------------------------------------------------------- honest model selection (issue 28)

TINY = ["data.options={num_train: 400, num_test: 100, image_size: 12}", "model.name=convnet",
        "model.options={width: 4}", "train.epochs=2", "train.batch_size=50", "output.report=false",
        "output.tensorboard=false", "output.progress=lines", "train.threads=1"]


def test_by_default_best_pt_is_selected_on_a_held_out_stratified_validation_split(tmp_path, capsys):
    import cifarlab

    run = cifarlab.train(None, [f"output.dir={tmp_path}", *TINY])  # the defaults: no val_split given
    assert run.config.data.val_split == 0.1  # config.yaml records what `auto` decided
    assert run.summary.selected_by == "val_acc" and run.summary.selected_on == "validation split"
    assert run.summary.val_images == 40 and run.summary.final_test_acc == run.history[-1].test_acc
    closing = capsys.readouterr().err.strip().splitlines()[-1]
    assert "chosen by val_acc" in closing and f"last epoch (2) {100 * run.history[-1].test_acc:.2f}%" in closing


@pytest.mark.parametrize("recipe", ["resnet18-steplr", "resnet18-cutout", "custom-resnet-onecycle",
                                    "resnet18-layernorm-plateau", "custom-resnet-fp16", "smoke"])
def test_course_recipes_keep_the_courses_test_selection(recipe):
    from cifarlab.config import load_config

    assert load_config(recipe).data.val_split is None
    assert load_config("fmnist-quick").data.val_split == "auto"


def test_a_run_selected_on_the_test_split_says_it_is_optimistic_everywhere(tmp_path, capsys):
    import cifarlab
    from cifarlab.analysis.run_sections import summary_section
    from cifarlab.use.predict import Predictions

    run = cifarlab.train(None, [f"output.dir={tmp_path}", "data.val_split=null", *TINY])
    last = run.history[-1].test_acc
    assert run.summary.selected_by == "test_acc" and run.summary.selected_on == "test split (optimistic)"
    closing = capsys.readouterr().err.strip().splitlines()[-1]
    assert "selected on the test split (optimistic)" in closing and f"last epoch (2) {100 * last:.2f}%" in closing
    assert json.loads((run.run_dir / "summary.json").read_text())["selected_on"] == "test split (optimistic)"
    predictions = Predictions(torch.full((4, 10), 0.1), torch.zeros(4, dtype=torch.long), torch.zeros(4))
    section = summary_section(run.summary, run.summary.selected_by, predictions, run.config)
    text = " ".join(block.text for block in section.blocks if hasattr(block, "text"))
    assert "selected on the test split (optimistic)" in text
    assert f"last epoch's test accuracy is {100 * last:.2f}%" in text


def test_a_recorded_config_without_val_split_keeps_the_old_default_none():
    from cifarlab.config import Config, validate_recorded

    recorded = Config().to_dict()
    del recorded["data"]["val_split"]  # a run recorded before the key existed trained without a split
    assert validate_recorded(recorded).data.val_split is None
    recorded["data"]["val_split"] = 0.2
    assert validate_recorded(recorded).data.val_split == 0.2
