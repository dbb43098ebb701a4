"""`data.dataset: hf` on datasets the tests build with `datasets` itself (PIL images, a ClassLabel column):
saved with save_to_disk and written as parquet files, decoded once into the uint8 cache, trained on."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import cifarlab
from cifarlab.data.sources import load_dataset
from cifarlab.errors import UserError

datasets = pytest.importorskip("datasets")
CLASSES = ["dark", "bright", "striped"]


def _images(count: int, seed: int):
    """`count` rows of 20x24 RGB images whose class a small network can tell apart."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), count)
    images = []
    for label in labels:
        pixels = rng.integers(0, 60, (20, 24, 3)).astype(np.uint8) + (150 if label == 1 else 0)
        if label == 2:
            pixels[::4] = 255
        images.append(Image.fromarray(pixels))
    return {"img": images, "animal": labels.tolist()}


def _dataset_dict():
    features = datasets.Features({"img": datasets.Image(), "animal": datasets.ClassLabel(names=CLASSES)})
    return datasets.DatasetDict({split: datasets.Dataset.from_dict(_images(n, seed), features=features)
                                 for split, n, seed in (("train", 96, 0), ("test", 48, 1))})


@pytest.fixture
def saved(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "saved"
    _dataset_dict().save_to_disk(str(folder))
    return folder


def test_a_saved_dataset_decodes_once_with_its_class_names(saved, tmp_path):
    first = load_dataset("hf", saved)
    assert first.classes == tuple(CLASSES) and first.train.images.shape == (96, 3, 20, 20)
    assert first.train.images.dtype == torch.uint8 and first.test.labels.tolist() == _images(48, 1)["animal"]
    # the rule of every image source: shorter side to 20, centre crop (2 columns cut each side)
    expected = torch.from_numpy(np.array(_images(96, 0)["img"][5])[:, 2:22].copy()).permute(2, 0, 1)
    assert torch.equal(first.train.images[5], expected)
    again = load_dataset("hf", saved)
    assert again.origin.startswith("cache ") and torch.equal(again.train.images, first.train.images)
    assert len(list((tmp_path / "cache" / "hf").glob("*.pt"))) == 1


@pytest.mark.parametrize("tamper", ["labels", "pixels", "names"])
def test_a_tampered_hf_cache_is_rebuilt_not_trusted(saved, tmp_path, tamper, caplog):
    first = load_dataset("hf", saved)
    cache = next((tmp_path / "cache" / "hf").glob("*.pt"))
    blob = torch.load(cache, weights_only=True)
    images, labels = blob["train"]
    if tamper == "labels":
        blob["train"] = (images, (labels + 1) % len(CLASSES))
    elif tamper == "pixels":
        blob["train"] = (images[:10], labels[:10])
    else:
        blob["classes"] = list(reversed(CLASSES))
    torch.save(blob, cache)
    again = load_dataset("hf", saved)
    assert not again.origin.startswith("cache ") and "ignoring hf cache" in caplog.text
    assert again.classes == tuple(CLASSES)
    assert torch.equal(again.train.labels, first.train.labels) and torch.equal(again.train.images, first.train.images)


def test_parquet_files_named_by_split_read_the_same(saved, tmp_path):
    parquet = tmp_path / "parquet" / "data"
    parquet.mkdir(parents=True)
    for split, part in _dataset_dict().items():
        part.to_parquet(str(parquet / f"{split}-00000-of-00001.parquet"))
    from_parquet, from_saved = load_dataset("hf", tmp_path / "parquet"), load_dataset("hf", saved)
    assert from_parquet.classes == tuple(CLASSES)
    assert torch.equal(from_parquet.train.images, from_saved.train.images)
    assert torch.equal(from_parquet.test.labels, from_saved.test.labels)


def test_options_name_columns_splits_and_size(saved):
    ds = load_dataset("hf", saved, image_column="img", label_column="animal", image_size=8, channels=1)
    assert ds.train.images.shape == (96, 1, 8, 8)
    with pytest.raises(UserError, match="'label' is not a column; the columns are img, animal"):
        load_dataset("hf", saved, label_column="label")
    with pytest.raises(UserError, match="no split 'validation' for val; its splits are train, test"):
        load_dataset("hf", saved, val_split_name="validation")
    with pytest.raises(UserError, match="unknown option 'size' for dataset 'hf'"):
        load_dataset("hf", saved, size=8)


def test_a_plain_integer_label_column_is_refused_with_the_cast_to_make(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "cache"))
    rows = _images(8, 0)
    plain = datasets.Dataset.from_dict(rows, features=datasets.Features({"img": datasets.Image(),
                                                                        "animal": datasets.Value("int64")}))
    datasets.DatasetDict({"train": plain, "test": plain}).save_to_disk(str(tmp_path / "plain"))
    with pytest.raises(UserError, match="0 ClassLabel columns among img, animal; name one"):
        load_dataset("hf", tmp_path / "plain")
    with pytest.raises(UserError, match="column 'animal' is Value, not ClassLabel; cast it"):
        load_dataset("hf", tmp_path / "plain", label_column="animal")


def test_a_run_trains_on_it_and_evaluates_it_again(saved, tmp_path):
    run = cifarlab.train("smoke", [f"output.dir={tmp_path / 'runs'}", "data.dataset=hf", f"data.dir={saved}",
                                   "data.options={}", "train.epochs=3", "train.batch_size=32", "train.device=cpu",
                                   "output.tensorboard=false", "output.progress=none", "schedule.peak_epoch=1"])
    assert run.summary["dataset"] == "hf" and run.best_test_acc > 0.6  # 3 easy classes; chance is 1/3
    from cifarlab.use.evaluate import evaluate_checkpoint

    model = cifarlab.load_model(run.run_dir / "checkpoints" / "best.pt", device="cpu")
    assert model.classes == tuple(CLASSES) and model.image_size == 20
    result = evaluate_checkpoint(model)  # the run's own test split, read from data.dir again
    assert result["test_acc"] == pytest.approx(run.summary["best_test_acc"])
