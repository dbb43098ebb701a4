"""The `folder` recipe sizes itself to one's own images, and a few hundred images per class learn (issue 18 item 2)."""
import json

import pytest
import yaml

from _folders import needs_fashion, write_fashion_folder
from _runs import FAST
from cifarlab.cli import main
from cifarlab.config import load_config
from cifarlab.trainer.sizing import auto_batch_size, auto_epochs

# Best-checkpoint test accuracy of `cifarlab train folder` on 100 real Fashion-MNIST PNGs per class (30 per
# class in test/), fp32, on a 2-core AMD EPYC without AVX512-BF16: seeds 0-3 gave 82.33, 86.67, 84.00 and
# 84.67% (bench/README.md); the floor leaves 7 points below the lowest.
FOLDER_FLOOR = 0.75


def test_auto_sizes_give_a_few_hundred_steps_to_small_data_and_a_large_batch_to_large():
    assert auto_batch_size(900) == 32 and auto_epochs(29) == 21  # 100 per class, 10 classes, 10% for validation
    assert auto_batch_size(30) == 8 and auto_epochs(4) == 100
    assert auto_batch_size(50_000) == 256 and auto_epochs(196) == 8
    assert auto_batch_size(5) == 5  # never more than the images


def test_the_recipe_leaves_batch_epochs_and_validation_to_the_data():
    cfg = load_config("folder", ["data.dir=my_photos"])
    assert (cfg.data.dataset, cfg.data.dir, cfg.data.val_split) == ("folder", "my_photos", "auto")
    assert (cfg.train.batch_size, cfg.train.epochs) == ("auto", "auto")


@needs_fashion
@pytest.mark.parametrize("per_class, batch, val_split", [(3, 8, None), (20, 8, 0.1)])
def test_config_yaml_records_the_sizes_used(per_class, batch, val_split, tmp_path, monkeypatch, capsys):
    write_fashion_folder(tmp_path / "fm", per_class, 2)
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "cache"))
    assert main(["train", "folder", f"data.dir={tmp_path / 'fm'}", "train.epochs=1", f"output.dir={tmp_path}",
                 "output.report=false", *FAST]) == 0
    run_dir = next((tmp_path / "folder").iterdir())
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (recorded["train"]["batch_size"], recorded["train"]["epochs"]) == (batch, 1)
    assert recorded["data"]["val_split"] == val_split
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["selected_by"] == ("val_acc" if val_split else "test_acc")
    assert "warning: this run takes only" in capsys.readouterr().err  # one epoch of a small folder: few steps


@needs_fashion
@pytest.mark.slow
def test_the_folder_recipe_learns_from_100_images_per_class(tmp_path, monkeypatch):
    write_fashion_folder(tmp_path / "fm", 100, 30)
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "cache"))
    assert main(["train", "folder", f"data.dir={tmp_path / 'fm'}", "train.precision=fp32", f"output.dir={tmp_path}",
                 "output.report=false", *FAST]) == 0
    summary = json.loads((next((tmp_path / "folder").iterdir()) / "summary.json").read_text())
    assert summary["best_test_acc"] >= FOLDER_FLOOR, summary["best_test_acc"]
