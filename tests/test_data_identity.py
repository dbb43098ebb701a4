"""Data identity, caches, degenerate files, read-only places and many classes (issue 17): what should
work does, with at most one warning line, and what was written stays whole.

The refusals of the same classes are in test_bad_input_data.py; these are the cases where a careful user
expects the command to go on: other test images (a warning), a checkpoint from before fingerprints, a
tampered cache (rebuilt), a file name that is not UTF-8, a float TIFF, a read-only data folder, 2,000
classes under a memory limit.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_bad_input_data import _one_image_changed, _png_folder, folder_run_copy

from _folders import needs_fashion
from _runs import MEMORY_LIMIT, SRC, tampered_copy, tree_hashes
from cifarlab.cli import main
from cifarlab.data.sources import load_dataset


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, shared_runs):
    return folder_run_copy(tmp_path_factory.mktemp("folder"), shared_runs)


def _best(run: Path) -> str:
    return str(run / "checkpoints" / "best.pt")


def test_eval_on_other_test_images_warns_once_and_scores_them(folder_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIFARLAB_DATA", str(folder_run["cache"]))
    assert main(["eval", _best(folder_run["run"])]) == 0
    assert "warning" not in capsys.readouterr().err  # its own data: nothing to say
    other = _one_image_changed(folder_run["images"], tmp_path / "other", "test")
    assert main(["eval", _best(folder_run["run"]), "--data-dir", str(other)]) == 0
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "the test images of folder" in warnings[0], err
    assert "accuracy is for the data given now" in warnings[0] and "test_acc" in out


def test_a_checkpoint_from_before_fingerprints_evaluates_and_resumes(folder_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIFARLAB_DATA", str(folder_run["cache"]))
    run = tampered_copy(folder_run["run"], tmp_path / "old", lambda payload: payload.pop("data_fingerprint"))
    assert main(["eval", _best(run)]) == 0
    assert main(["resume", str(run), "--epochs", "2"]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err and "Traceback" not in err
    from cifarlab.run.checkpoint import load_checkpoint

    stored = load_checkpoint(run / "checkpoints" / "last.pt")["data_fingerprint"]  # the resumed run adds it
    assert stored is not None and set(stored) == {"train", "val", "test"}


def _tamper_labels(blob):
    blob["train"] = (blob["train"][0], torch.full_like(blob["train"][1], 7))


def _tamper_cut(blob):
    blob["train"] = (blob["train"][0][:3], blob["train"][1][:3])


def _tamper_mean(blob):  # a cache written by an older cifarlab kept mean/std: they must never be read
    blob["mean"] = [math.nan] * blob["train"][0].shape[1]


def _tamper_names(blob):
    blob["classes"] = ["bee", "ant"]


def _tamper_duplicate(blob):
    blob["classes"] = ["ant", "ant"]


def _tamper_pixels(blob):
    images = blob["train"][0].clone()
    images[0] = 255 - images[0]
    blob["train"] = (images, blob["train"][1])


@pytest.mark.parametrize("tamper", [_tamper_labels, _tamper_cut, _tamper_mean, _tamper_names, _tamper_duplicate,
                                    _tamper_pixels], ids=lambda f: f.__name__.removeprefix("_tamper_"))
def test_a_tampered_folder_cache_is_rebuilt_not_trusted(tamper, tmp_path, monkeypatch, caplog):
    images = _png_folder(tmp_path / "images")
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "cache"))
    fresh = load_dataset("folder", images)
    (cache,) = (tmp_path / "cache").rglob("*.pt")
    blob = torch.load(cache, weights_only=True)
    tamper(blob)
    torch.save(blob, cache)
    with caplog.at_level(logging.WARNING):
        again = load_dataset("folder", images)
    if tamper is not _tamper_mean:  # mean/std are recomputed from the pixels, never read: nothing to ignore
        assert "ignoring folder cache" in caplog.text
    assert again.classes == fresh.classes and again.mean == fresh.mean and again.std == fresh.std
    for name in ("train", "test"):
        assert torch.equal(getattr(again, name).images, getattr(fresh, name).images)
        assert torch.equal(getattr(again, name).labels, getattr(fresh, name).labels)
    caplog.clear()
    load_dataset("folder", images)  # the rebuilt cache is good again
    assert "ignoring" not in caplog.text


@pytest.mark.slow
@needs_fashion
def test_a_tampered_dataset_cache_is_rebuilt_not_trusted(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path))
    fresh = load_dataset("fashion_mnist")
    cache = tmp_path / "fashion_mnist" / "fashion_mnist-uint8.pt"
    blob = torch.load(cache, weights_only=True)
    blob["mean"], blob["classes"] = [math.nan], list(reversed(blob["classes"]))
    torch.save(blob, cache)
    with caplog.at_level(logging.WARNING):
        again = load_dataset("fashion_mnist")
    assert "ignoring unreadable dataset cache" in caplog.text
    assert again.classes == fresh.classes and again.mean == fresh.mean


def test_a_file_name_that_is_not_utf8_is_read(tmp_path, monkeypatch):
    images = _png_folder(tmp_path / "images")
    odd = os.fsencode(images / "train" / "ant") + b"/caf\xe9.png"  # Latin-1, as an old camera names it
    with open(odd, "wb") as handle:
        Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(handle, format="PNG")
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "cache"))
    dataset = load_dataset("folder", images)
    assert len(dataset.train.labels) == 2 * 24 + 1


def test_a_float_tiff_in_0_1_is_scaled_not_clipped_to_black(tmp_path):
    from cifarlab.data.images import read_image

    path = tmp_path / "float.tif"
    Image.fromarray(np.full((12, 12), 0.5, np.float32), mode="F").save(path)
    pixels = read_image(path, channels=1, size=12)
    assert int(pixels.min()) == int(pixels.max()) == 128  # 0.5 * 255, rounded


# ---------------------------------------------------------------- read-only places, as real mounts

def _read_only(argv: list[str], folders: list[Path], env: dict | None = None, code: str | None = None):
    """Run `cifarlab argv` (or python -c `code`) with `folders` bind-mounted read-only, in a user and mount
    namespace of its own (unshare -rm: no privileges needed, the machine's mounts untouched). Running as
    root, a chmod would not stop a write; a read-only mount does."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("unshare -rm (user namespaces) is not available here")
    mounts = " && ".join(f"mount --bind '{f}' '{f}' && mount -o remount,bind,ro '{f}'" for f in folders)
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "cifarlab", *argv]
    script = mounts + ' && exec "$@"'
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *command], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(SRC), **(env or {})})


def _one_line(done, command: str, *words: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"cifarlab {command}: error: ") and "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.slow
def test_export_into_a_read_only_folder_is_one_line(folder_run, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    done = _read_only(["export", _best(folder_run["run"]), "--format", "safetensors", "--out",
                       str(out / "net.safetensors")], [out])
    _one_line(done, "export", "cannot write", "net.safetensors", "Read-only file system")
    assert not any(out.iterdir())


@pytest.mark.slow
def test_gradcam_and_report_into_a_read_only_run_are_one_line(folder_run, tmp_path):
    run = shutil.copytree(folder_run["run"], tmp_path / "run")
    before = tree_hashes(run)
    env = {"CIFARLAB_DATA": str(folder_run["cache"])}
    _one_line(_read_only(["gradcam", _best(run), "--images", "0,1"], [run], env), "gradcam", "Read-only file system")
    _one_line(_read_only(["report", str(run)], [run], env), "report", "read-only")
    assert tree_hashes(run) == before


@pytest.mark.slow
@needs_fashion
def test_a_read_only_data_folder_and_home_still_load_the_os_package_dataset(tmp_path):
    data, home = tmp_path / "data", tmp_path / "home"
    data.mkdir(), home.mkdir()
    code = ("from cifarlab.data.sources import load_dataset\n"
            "d = load_dataset('fashion_mnist')\nprint(len(d.train.labels), len(d.test.labels))")
    for env in ({"CIFARLAB_DATA": str(data)}, {"HOME": str(home), "CIFARLAB_DATA": ""}):
        done = _read_only([], [data, home], env, code=code)
        assert done.returncode == 0 and done.stdout.split() == ["60000", "10000"], done.stderr[-3000:]
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 1  # a warning at most
    assert not any(data.iterdir()) and not any(home.iterdir())


# ---------------------------------------------------------------- many classes


@pytest.mark.slow
def test_a_2000_class_report_stays_within_a_memory_limit(tmp_path):
    """The report of a 2,000-class run (a MemoryError traceback before): under the suite's 4 GiB address-space
    limit; per_class.csv and confusion.csv complete, the plots limited to the classes with most errors."""
    code = (
        "import sys, numpy as np, cifarlab\n"
        "K, rng = 2000, np.random.default_rng(0)\n"
        "x = rng.integers(0, 256, (2 * K, 3, 12, 12), dtype=np.uint8); y = np.arange(2 * K) % K\n"
        "run = cifarlab.train('smoke', [f'output.dir={sys.argv[1]}', 'train.epochs=1', 'schedule.peak_epoch=0.5',"
        " 'output.report=true', 'train.threads=1', 'output.tensorboard=false', 'output.progress=none'],"
        " data=(x, y, x, y))\n"
        "print(run.run_dir)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(SRC)},
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT)))
    assert done.returncode == 0, done.stderr[-3000:]
    run = Path(done.stdout.strip().splitlines()[-1])
    with open(run / "tables" / "per_class.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2000
    with open(run / "tables" / "confusion.csv", newline="") as handle:
        assert sum(int(row["count"]) for row in csv.DictReader(handle)) == 4000  # every test image
    for name in ("confusion.png", "per_class.png"):
        with Image.open(run / "plots" / name) as image:
            assert max(image.size) < 3000, image.size
    assert "the 30 of 2000 classes with the most errors" in (run / "report.md").read_text()
