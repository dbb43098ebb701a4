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


def _dataset_dict(test_names=CLASSES):
    """train (96 rows) and test (48 rows); the test split's ClassLabel lists `test_names`, its numbers written
    under them, so that every image keeps its class (a class `test_names` lacks keeps its number)."""
    splits = {}
    for split, count, seed, names in (("train", 96, 0, CLASSES), ("test", 48, 1, list(test_names))):
        rows = _images(count, seed)
        rows["animal"] = [names.index(CLASSES[k]) if CLASSES[k] in names else k for k in rows["animal"]]
        features = datasets.Features({"img": datasets.Image(), "animal": datasets.ClassLabel(names=list(names))})
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    return datasets.DatasetDict(splits)


def _parquet(dataset_dict, folder):
    """`dataset_dict` as parquet files named by split, as the Hub lays them out: folder/data/<split>-....parquet."""
    (folder / "data").mkdir(parents=True)
    for split, part in dataset_dict.items():
        part.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


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
    from_parquet = load_dataset("hf", _parquet(_dataset_dict(), tmp_path / "parquet"))
    from_saved = load_dataset("hf", saved)
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
    # the first message already names the fix: naming the column (data.options.label_column) cannot help
    with pytest.raises(UserError, match=r"no ClassLabel column \(its columns: img, animal\); cast one .*"
                                        r"cast_column\('animal', datasets.ClassLabel\(names="):
        load_dataset("hf", tmp_path / "plain")
    with pytest.raises(UserError, match="data.options.label_column='animal' names a Value column, not a ClassLabel "
                                        r"one; cast it, e.g. dataset.cast_column\('animal'"):
        load_dataset("hf", tmp_path / "plain", label_column="animal")


def test_a_run_trains_on_it_and_evaluates_it_again(saved, tmp_path):
    run = cifarlab.train("smoke", [f"output.dir={tmp_path / 'runs'}", "data.dataset=hf", f"data.dir={saved}",
                                   "data.options={}", "train.epochs=3", "train.batch_size=32", "train.device=cpu",
                                   "output.tensorboard=false", "output.progress=none", "schedule.peak_epoch=1"])
    assert run.summary.dataset == "hf" and run.best_test_acc > 0.6  # 3 easy classes; chance is 1/3
    from cifarlab.use.evaluate import evaluate_checkpoint

    model = cifarlab.load_model(run.run_dir / "checkpoints" / "best.pt", device="cpu")
    assert model.classes == tuple(CLASSES) and model.image_size == 20
    result = evaluate_checkpoint(model)  # the run's own test split, read from data.dir again
    assert result.test_acc == pytest.approx(run.summary.best_test_acc)


def _two_train_files(dataset_dict, folder):
    """A parquet folder whose train split is two files, the second listing the class names in another order."""
    _parquet(dataset_dict, folder)
    other = _dataset_dict(test_names=list(reversed(CLASSES)))["test"]
    other.to_parquet(str(folder / "data" / "train-00001-of-00002.parquet"))
    return folder


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet", "parquet-train-in-two-files"])
def test_a_split_listing_the_class_names_in_another_order_keeps_every_image_class(layout, tmp_path, monkeypatch):
    """The numbers of a split whose ClassLabel lists the names in another order mean those names: read as the
    train split's numbers they would train and score against the wrong classes (33% on a 100% task)."""
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "cache"))
    reordered = _dataset_dict(test_names=["striped", "dark", "bright"])
    if layout == "save_to_disk":
        reordered.save_to_disk(str(tmp_path / "d"))
    elif layout == "parquet":
        _parquet(reordered, tmp_path / "d")
    else:
        _two_train_files(_dataset_dict(), tmp_path / "d")
    loaded = load_dataset("hf", tmp_path / "d")
    assert loaded.classes == tuple(CLASSES)
    assert loaded.test.labels.tolist() == _images(48, 1)["animal"]
    if layout == "parquet-train-in-two-files":  # the second train file holds the test rows, names reversed
        assert loaded.train.labels.tolist() == _images(96, 0)["animal"] + _images(48, 1)["animal"]


def _saved(dataset_dict, folder, tamper=None):
    dataset_dict.save_to_disk(str(folder))
    if tamper is not None:
        tamper(folder)
    return folder


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _parquet_metadata_not_json(folder):
    import pyarrow.parquet as pq

    path = folder / "data" / "test-00000-of-00001.parquet"
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({b"huggingface": b"{not json"}), path)
    return folder


def _without_labels(dataset_dict):
    dataset_dict["test"] = dataset_dict["test"].remove_columns("animal")
    return dataset_dict


def _plain_labels(dataset_dict, dtype="int64"):
    return dataset_dict.cast_column("animal", datasets.Value(dtype))


def _test_images_as_strings(dataset_dict):
    dataset_dict["test"] = dataset_dict["test"].remove_columns("img").add_column("img", ["x"] * 48)
    return dataset_dict


# (id, build(folder) -> data.dir, words the one line must hold)
BAD_HF = [
    ("test-names-not-the-train-names",
     lambda d: _saved(_dataset_dict(test_names=["dark", "bright", "wavy"]), d),
     ["class names of the 'test' split", "'wavy' is not a train class", "in any order"]),
    ("parquet-test-names-not-the-train-names",
     lambda d: _parquet(_dataset_dict(test_names=["dark", "bright", "wavy"]), d),
     ["'test' split (file ", "test-00000-of-00001.parquet", "'wavy' is not a train class"]),
    ("test-split-without-the-label-column",
     lambda d: _saved(_without_labels(_dataset_dict()), d),
     ["the 'test' split has no column 'animal'", "every split needs the train split's image and label columns"]),
    ("test-images-not-an-image-column",
     lambda d: _saved(_test_images_as_strings(_dataset_dict()), d),
     ["column 'img' of the 'test' split is Value, not Image", "cast_column('img', datasets.Image())"]),
    ("test-split-saved-empty",  # no arrow file at all: datasets fails with an IndexError naming nothing
     lambda d: _saved(datasets.DatasetDict(train=_dataset_dict()["train"], test=_dataset_dict()["test"].select([])), d),
     ["has an empty split ('test': no images)", "every split needs images"]),
    ("truncated-arrow-file",
     lambda d: _saved(_dataset_dict(), d, lambda f: _truncate(next((f / "test").glob("*.arrow")))),
     ["cannot read the save_to_disk folder", "write it again"]),
    ("dataset-dict-json-broken",
     lambda d: _saved(_dataset_dict(), d, lambda f: (f / "dataset_dict.json").write_text("{not json")),
     ["cannot read the save_to_disk folder", "its dataset_dict.json is broken"]),
    ("dataset-info-json-broken",
     lambda d: _saved(_dataset_dict(), d, lambda f: (f / "test" / "dataset_info.json").write_text("[1, 2")),
     ["cannot read the save_to_disk folder", "its test/dataset_info.json is broken"]),
    ("state-json-not-an-object",
     lambda d: _saved(_dataset_dict(), d, lambda f: (f / "train" / "state.json").write_text("[]")),
     ["cannot read the save_to_disk folder", "its train/state.json is broken (not a JSON object)"]),
    ("truncated-parquet-file",
     lambda d: _truncate(_parquet(_dataset_dict(), d) / "data" / "test-00000-of-00001.parquet") or d,
     ["cannot read the parquet file", "test-00000-of-00001.parquet", "ArrowInvalid"]),
    ("parquet-metadata-not-json",
     lambda d: _parquet_metadata_not_json(_parquet(_dataset_dict(), d)),
     ["cannot read the parquet file", "test-00000-of-00001.parquet", "JSONDecodeError"]),
    ("plain-integer-labels",
     lambda d: _saved(_plain_labels(_dataset_dict()), d),
     ["no ClassLabel column", "cast_column('animal', datasets.ClassLabel(names=[...]))"]),
    ("string-labels",
     lambda d: _saved(_plain_labels(_dataset_dict(), "string"), d),
     ["no ClassLabel column", "cast_column('animal', datasets.ClassLabel(names=[...]))"]),
    # round 4: one split in two roles trained or selected on the test data, silently
    ("validation-is-the-test-split", lambda d: _saved(_dataset_dict(), d), ["named for both test and val"],
     {"val_split_name": "test"}),
    ("test-is-the-train-split", lambda d: _saved(_dataset_dict(), d), ["named for both train and test"],
     {"test_split": "train"}),
    ("parquet-files-not-named-by-split",
     lambda d: d.mkdir() or _dataset_dict()["train"].to_parquet(str(d / "shapes.parquet")) and d,
     ["the dataset has no split 'test' for test; its splits are train"]),
    ("parquet-without-its-features",  # written by pyarrow or pandas: images are {bytes, path} structs
     lambda d: _without_metadata(_parquet(_dataset_dict(), d)),
     ["no Image column", "cast_column('img', datasets.Image())"]),
    ("an-image-missing", lambda d: _saved(_with_test_image(_dataset_dict(), None), d),
     ["test row 3 has no image", "every row needs one"]),
    ("an-image-not-an-image", lambda d: _saved(_with_test_image(_dataset_dict(), {"bytes": b"GIF", "path": None}), d),
     ["cannot read the image of test row 3", "not an image file"]),
]


def _without_metadata(folder):
    import pyarrow.parquet as pq

    for path in (folder / "data").glob("*.parquet"):
        pq.write_table(pq.read_table(path).replace_schema_metadata(None), path)
    return folder


def _with_test_image(dataset_dict, value):
    """Test row 3's image replaced by `value` (None, or {"bytes", "path"} that are no image)."""
    undecoded = dataset_dict["test"].cast_column("img", datasets.Image(decode=False))
    rows = undecoded.to_dict()
    rows["img"][3] = value
    dataset_dict["test"] = datasets.Dataset.from_dict(rows, features=undecoded.features)
    return dataset_dict


@pytest.mark.parametrize("case", BAD_HF, ids=[case[0] for case in BAD_HF])
def test_a_bad_hf_dataset_gives_one_line_exit_2_and_changes_nothing(case, tmp_path, monkeypatch, capsys):
    from _runs import FAST, assert_refused

    name, build, words, *options = case
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = build(tmp_path / "data")
    capsys.readouterr()  # the progress bars of writing it
    options = ", ".join(f"{key}: {value}" for key, value in (options[0] if options else {}).items())
    assert_refused(["train", "smoke", f"output.dir={tmp_path / 'runs'}", "data.dataset=hf", f"data.dir={folder}",
                    f"data.options={{{options}}}", *FAST], words, {"data": folder}, capsys, tmp_path)
    assert not (tmp_path / "runs").exists()


def _fake_hub(monkeypatch, tmp_path, revisions: dict):
    """huggingface_hub.snapshot_download answering from local folders: {revision: build(folder) or an exception}.
    Returns the calls it got, as (name, repo_type, revision)."""
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, *, repo_type=None, revision=None, cache_dir=None, allow_patterns=None, **_):
        calls.append((repo_id, repo_type, revision))
        answer = revisions[revision]
        if isinstance(answer, Exception):
            raise answer
        folder = tmp_path / "hub" / str(revision).replace("/", "_")
        if not folder.exists():
            folder.mkdir(parents=True)
            answer(folder)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "cache"))
    return calls


def _converted(dataset_dict):
    """The Hub's parquet conversion layout: <config>/<split>/0000.parquet."""
    def build(folder):
        for split, part in dataset_dict.items():
            (folder / "plain_text" / split).mkdir(parents=True)
            part.to_parquet(str(folder / "plain_text" / split / "0000.parquet"))
    return build


def test_a_hub_dataset_is_read_file_by_file_as_a_local_one_not_by_its_published_features(tmp_path, monkeypatch):
    """A Hub name's files are checked as a local folder's: the test file's own ClassLabel (names in another
    order) maps its numbers by name; `datasets.load_dataset` would have read them under the published names.
    A repository without parquet files on its main branch is read from the Hub's parquet conversion."""
    reordered = _dataset_dict(test_names=["striped", "dark", "bright"])
    calls = _fake_hub(monkeypatch, tmp_path, {None: lambda folder: (folder / "README.md").write_text("images"),
                                              "refs/convert/parquet": _converted(reordered)})
    loaded = load_dataset("hf", "someone/shapes")
    assert loaded.classes == tuple(CLASSES)
    assert loaded.test.labels.tolist() == _images(48, 1)["animal"]
    assert calls == [("someone/shapes", "dataset", None), ("someone/shapes", "dataset", "refs/convert/parquet")]


HUB_REFUSALS = [
    ("unreachable", {None: OSError("offline mode is enabled")},
     ["cannot read the Hugging Face dataset 'someone/shapes'", "offline mode is enabled", "HF_HUB_OFFLINE"]),
    ("no-parquet-anywhere", {None: lambda f: None, "refs/convert/parquet": lambda f: None},
     ["'someone/shapes' has no parquet files", "save_to_disk"]),
    ("test-names-not-the-train-names", {None: _converted(_dataset_dict(test_names=["dark", "bright", "wavy"]))},
     ["'wavy' is not a train class", "0000.parquet"]),
]


@pytest.mark.parametrize("case", HUB_REFUSALS, ids=[case[0] for case in HUB_REFUSALS])
def test_a_bad_hub_dataset_is_one_line(case, tmp_path, monkeypatch):
    _, revisions, words = case
    _fake_hub(monkeypatch, tmp_path, revisions)
    with pytest.raises(UserError) as refused:
        load_dataset("hf", "someone/shapes")
    assert len(str(refused.value).splitlines()) == 1
    for word in words:
        assert word in str(refused.value), (word, str(refused.value))
