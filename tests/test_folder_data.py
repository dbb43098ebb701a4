"""`data.dataset: folder`: an ImageFolder tree of the user's own images, decoded once, cached, trainable."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _folders import FASHION_NAMES, needs_fashion, train_fashion_folder, write_fashion_folder
from cifarlab.data.sources import load_dataset
from cifarlab.errors import UserError


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    """Every test gets its own dataset cache (never the user's ~/.cache)."""
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def tiny_tree(root: Path, classes=("cat", "dog"), splits=("train", "test"), size=(12, 12)) -> Path:
    """Two images per class and split, RGB, class k filled with value 50 + 100 k."""
    for split in splits:
        for k, name in enumerate(classes):
            for i in range(2):
                save(root / split / name / f"{i}.png", np.full((size[1], size[0], 3), 50 + 100 * k, np.uint8))
    return root


@needs_fashion
def test_decoded_pixels_and_labels_equal_the_pngs(tmp_path):
    written = write_fashion_folder(tmp_path / "fm", train_per_class=3, test_per_class=2)
    ds = load_dataset("folder", tmp_path / "fm")
    assert ds.classes == tuple(sorted(FASHION_NAMES))  # sorted like torchvision's ImageFolder
    assert ds.train.images.shape == (30, 1, 28, 28) and ds.test.images.shape == (20, 1, 28, 28)
    assert ds.image_size == 28 and ds.in_channels == 1 and ds.val is None
    assert sorted(ds.train.labels[:10].tolist()) == list(range(10))  # a train_subset prefix keeps every class
    by_path = {path: (label, pixels) for path, label, pixels in written["train"]}
    for k, name in enumerate(ds.classes):
        files = sorted(p for p in by_path if p.parent.name == name)
        rows = (ds.train.labels == k).nonzero().flatten()
        assert len(rows) == 3
        for row, path in zip(rows.tolist(), files):
            assert np.array_equal(ds.train.images[row, 0].numpy(), by_path[path][1])  # PNG is lossless, size kept
            assert FASHION_NAMES[by_path[path][0]] == name
    expected_mean = ds.train.images.double().mean().item() / 255
    assert ds.mean[0] == pytest.approx(expected_mean, abs=1e-9)  # statistics of the train split


@pytest.mark.slow  # 5 epochs on 800 real images
@needs_fashion
def test_a_1000_image_folder_trains_end_to_end(tmp_path):
    run, _ = train_fashion_folder(tmp_path, 80, 20, 5)  # 800 + 200 real images as PNG files
    assert run.summary.status == "completed" and run.summary.dataset == "folder"
    assert run.best_test_acc > 0.6, run.history  # chance is 0.1


def test_cache_is_reused_then_rebuilt_when_a_file_changes(tmp_path, cache_dir):
    root = tiny_tree(tmp_path / "pets")
    first = load_dataset("folder", root)
    assert "image folder, 8 files" in first.origin
    assert load_dataset("folder", root, image_size=8).image_size == 8  # other options: their own cache
    again = load_dataset("folder", root)
    assert again.origin.startswith("cache ") and torch.equal(again.train.images, first.train.images)
    assert load_dataset("folder", root, image_size=8).origin.startswith("cache ")
    changed = root / "train" / "cat" / "0.png"
    save(changed, np.full((12, 12, 3), 7, np.uint8))
    os.utime(changed, ns=(1, 1))  # a different mtime even on coarse-clock file systems
    rebuilt = load_dataset("folder", root)
    assert not rebuilt.origin.startswith("cache ")
    assert rebuilt.train.images[0].max() == 7 and first.train.images[0].max() == 50
    assert len(list((cache_dir / "folder").glob("*.pt"))) == 2  # the superseded cache is gone, image_size=8's kept


def test_aspect_ratio_is_kept_by_resize_and_centre_crop(tmp_path):
    wide = np.zeros((30, 60, 3), np.uint8)
    wide[:, 11:49] = 255  # white past the centre square by more than the filter's reach, black sides
    for split in ("train", "test"):
        save(tmp_path / "d" / split / "a" / "wide.png", wide)
        save(tmp_path / "d" / split / "b" / "wide.png", wide)
    ds = load_dataset("folder", tmp_path / "d", image_size=15)
    assert ds.image_size == 15 and ds.train.images.min() == 255  # squashing would have kept black sides


def test_default_size_is_the_most_common_shorter_side_capped_at_64(tmp_path):
    tiny_tree(tmp_path / "small", size=(20, 16))
    assert load_dataset("folder", tmp_path / "small").image_size == 16
    tiny_tree(tmp_path / "big", size=(100, 90))
    save(tmp_path / "big" / "train" / "cat" / "odd.png", np.zeros((20, 20, 3), np.uint8))
    assert load_dataset("folder", tmp_path / "big").image_size == 64


def test_channels_follow_the_majority_and_alpha_is_composited_over_black(tmp_path):
    root = tiny_tree(tmp_path / "d")
    save(root / "train" / "cat" / "grey.png", np.full((12, 12), 200, np.uint8), "L")
    rgba = np.zeros((12, 12, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:6, :, 3] = 255  # top half opaque white, bottom half transparent white
    save(root / "train" / "dog" / "rgba.png", rgba, "RGBA")
    ds = load_dataset("folder", root)
    assert ds.in_channels == 3  # 8 RGB + 1 RGBA against 1 grey
    grey, transparent = ds.train.images[4], ds.train.images[5]  # cat/0 dog/0 cat/1 dog/1 cat/grey dog/rgba
    assert grey.min() == grey.max() == 200
    assert transparent[:, :6].min() == 255 and transparent[:, 6:].max() == 0
    assert load_dataset("folder", root, channels=1).in_channels == 1


def test_val_split_and_ignored_files(tmp_path):
    root = tiny_tree(tmp_path / "d", splits=("train", "val", "test"))
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    save(root / "train" / ".ipynb_checkpoints" / "x.png", np.zeros((12, 12, 3), np.uint8))
    ds = load_dataset("folder", root)
    assert ds.classes == ("cat", "dog") and len(ds.train.labels) == 4
    assert ds.val is not None and ds.val.labels.tolist() == [0, 1, 0, 1]  # classes interleaved


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels but carries almost none: a huge image's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("breakage, expected", [
    (lambda r: (r / "test" / "dog" / "0.png").unlink() or (r / "test" / "dog" / "1.png").unlink(),
     "class folder {root}/test/dog has no images"),
    (lambda r: (r / "test" / "cat").rename(r / "test" / "kitten"),
     "test/ and train/ must hold the same class folders in {root}: test/ lacks ['cat'], has extra ['kitten']"),
    (lambda r: (r / "train" / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage"),
     "cannot read image {root}/train/dog/1.png"),
    (lambda r: [p.rename(r / "test" / p.name) for p in (r / "test").glob("*/*.png")] and
     [d.rmdir() for d in (r / "test").iterdir() if d.is_dir()],
     "{root}/test has no class folders"),
    (lambda r: (r / "test").rename(r / "testing"), "{root} has no test/ folder"),
    (lambda r: (r / "train" / "dog" / "1.png").write_bytes(_png_header(9_000, 9_000)),
     "{root}/train/dog/1.png is 9000x9000 pixels, more than the"),  # MAX_PIXELS, below PIL's own limit
])
def test_bad_folders_give_one_line_naming_the_problem(tmp_path, cache_dir, breakage, expected):
    root = tiny_tree(tmp_path / "d").resolve()
    breakage(root)
    with pytest.raises(UserError) as err:
        load_dataset("folder", root)
    message = str(err.value)
    assert expected.format(root=root) in message and "\n" not in message
    assert not (cache_dir / "folder").exists()  # a refused folder leaves no cache behind


def test_bad_options_and_missing_dir(tmp_path):
    root = tiny_tree(tmp_path / "d")
    with pytest.raises(UserError,
                       match="unknown option 'size' for dataset 'folder'; choose from: image_size, channels"):
        load_dataset("folder", root, size=32)
    with pytest.raises(UserError, match="image_size must be an integer in 8..512, got 4"):
        load_dataset("folder", root, image_size=4)
    with pytest.raises(UserError, match="channels must be 1 or 3, got 4"):
        load_dataset("folder", root, channels=4)
    with pytest.raises(UserError, match="needs data.dir="):
        load_dataset("folder", None)
    with pytest.raises(UserError, match="is not a folder"):
        load_dataset("folder", tmp_path / "nowhere")


def test_big_jpegs_decode_at_reduced_scale_to_the_same_picture(tmp_path):
    """JPEG draft mode (decoding at 1/8 scale) must give the picture a full decode gives."""
    y, x = np.mgrid[0:600, 0:800]
    photo = np.stack([x * 255 // 800, y * 255 // 600, (x + y) * 255 // 1400], -1).astype(np.uint8)
    for split in ("train", "test"):
        for name in ("a", "b"):
            save(tmp_path / "d" / split / name / "photo.jpg", photo)
    ds = load_dataset("folder", tmp_path / "d", image_size=32)
    with Image.open(tmp_path / "d" / "train" / "a" / "photo.jpg") as image:
        image.load()  # fully decoded: draft mode no longer applies
        full = read_full(image)
    got = ds.train.images[0].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(got - full).mean() < 1 and np.abs(got - full).max() <= 8


def read_full(image) -> np.ndarray:
    from cifarlab.data.images import fit_square

    return fit_square(image, 3, 32).astype(int)
