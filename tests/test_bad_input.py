"""Bad input, one test each: ONE line on stderr naming the problem (and what is allowed), exit code 2,
no traceback, and nothing already written is lost or changed.

Each case is (id, how to set it up, the CLI arguments, words the message must contain). The CLI runs
in-process (`cifarlab.cli.main`) on the synthetic `smoke` recipe; files for the data cases are written
in the real on-disk formats by tests/_formats.py.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from _formats import cifar_batch, serve, write_cifar_tar, write_idx_dataset
from _runs import assert_refused, finished_and_open_runs, tampered_copy
from cifarlab.cli import main
from cifarlab.data import sources

FAST = ["train.threads=1", "output.tensorboard=false", "output.progress=none"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_runs):
    """A finished 1-epoch smoke run, and a 2-epoch one put back to its step-15 checkpoint (resumable)."""
    return finished_and_open_runs(tmp_path_factory.mktemp("runs"), shared_runs)


def _other_model(payload):  # config says width 16, weights are width 8
    payload["config"]["model"]["options"]["width"] = 16


def _fewer_classes(payload):  # 5 class names, a 10-way head
    payload["classes"] = payload["classes"][:5]


def _cifar_dir(tmp: Path, monkeypatch, good_md5: bool) -> Path:
    root = tmp / "data" / "cifar10"
    root.mkdir(parents=True)
    archive = root / "cifar-10-python.tar.gz"
    archive.write_bytes(b"this is not a gzip tar archive\n" * 10)
    if good_md5:  # the checksum matches, the content is still broken
        md5 = hashlib.md5(archive.read_bytes()).hexdigest()
        monkeypatch.setitem(sources.SOURCES, "cifar10", dataclasses.replace(
            sources.SOURCES["cifar10"], files=(("cifar-10-python.tar.gz", md5),)))
    return tmp / "data"


def _truncated_idx(tmp: Path, monkeypatch) -> Path:
    folder = tmp / "data" / "mnist"
    write_idx_dataset(folder, np.random.default_rng(0))
    path = folder / "t10k-images-idx3-ubyte.gz"
    import gzip

    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    monkeypatch.setitem(sources.SOURCES, "mnist", dataclasses.replace(sources.SOURCES["mnist"], os_dir=None))
    return tmp / "data"


def _evil_tar(tmp: Path, monkeypatch) -> Path:
    root = tmp / "data" / "cifar10"
    root.mkdir(parents=True)
    images = np.zeros((2, 3, 32, 32), np.uint8)
    archive = write_cifar_tar(root / "cifar-10-python.tar.gz", "cifar-10-batches-py",
                              {"test_batch": cifar_batch(images, np.array([0, 1]))}, extra={"../../evil.txt": b"x"})
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(sources.SOURCES, "cifar10", dataclasses.replace(
        sources.SOURCES["cifar10"], files=(("cifar-10-python.tar.gz", md5),)))
    return tmp / "data"


def _image_dir(tmp: Path) -> tuple[Path, Path]:
    bad = tmp / "photo.png"
    bad.write_text("not an image at all")
    return bad, tmp / "missing.png"


# (id, setup(tmp, runs, monkeypatch) -> argv, words the message must contain)
CASES = [
    ("unknown-recipe", lambda t, r, m: ["train", "no-such-recipe"], ["unknown recipe 'no-such-recipe'", "smoke"]),
    ("unknown-model", lambda t, r, m: ["train", "smoke", "model.name=resnet9000", f"output.dir={t}"],
     ["resnet9000", "convnet"]),
    ("unknown-dataset", lambda t, r, m: ["train", "smoke", "data.dataset=imagenet", f"output.dir={t}"],
     ["unknown dataset 'imagenet'", "cifar10"]),
    ("unknown-config-key", lambda t, r, m: ["train", "smoke", "optim.lrate=0.1"],
     ["optim.lrate", "allowed here", "lr"]),
    ("wrong-type", lambda t, r, m: ["train", "smoke", "train.epochs=many"], ["train.epochs", "integer", "many"]),
    ("negative-lr", lambda t, r, m: ["train", "smoke", "optim.lr=-0.1"], ["optim.lr", "greater than 0", "-0.1"]),
    ("zero-lr", lambda t, r, m: ["train", "smoke", "optim.lr=0"], ["optim.lr", "greater than 0"]),
    ("batch-larger-than-dataset", lambda t, r, m: ["train", "smoke", "train.batch_size=4096", f"output.dir={t}", *FAST],
     ["train.batch_size=4096", "512 training images"]),
    ("cutout-larger-than-image", lambda t, r, m: ["train", "smoke", "augment.cutout.size=40", f"output.dir={t}", *FAST],
     ["cutout.size", "40", "16"]),
    ("peak-epoch-after-the-end", lambda t, r, m: ["train", "smoke", "schedule.peak_epoch=5", f"output.dir={t}", *FAST],
     ["schedule.peak_epoch", "train.epochs=2"]),
    ("malformed-override", lambda t, r, m: ["train", "smoke", "train.epochs"], ["train.epochs", "key=value"]),
    ("override-into-a-value", lambda t, r, m: ["train", "smoke", "optim.lr.max=1"], ["optim.lr is a value"]),
    ("corrupt-archive", lambda t, r, m: ["train", "smoke", "data.dataset=cifar10", "data.options={}",
                                         f"data.dir={_cifar_dir(t, m, good_md5=True)}", f"output.dir={t}", *FAST],
     ["cifar-10-python.tar.gz", "could not be extracted", "delete it"]),
    ("checksum-mismatch", lambda t, r, m: ["train", "smoke", "data.dataset=cifar10", "data.options={}",
                                           f"data.dir={_cifar_dir(t, m, good_md5=False)}", f"output.dir={t}", *FAST],
     ["is corrupt: expected md5", "delete it"]),
    ("archive-escaping-paths", lambda t, r, m: ["train", "smoke", "data.dataset=cifar10", "data.options={}",
                                                f"data.dir={_evil_tar(t, m)}", f"output.dir={t}", *FAST],
     ["unsafe", "../../evil.txt", "outside"]),
    ("truncated-idx", lambda t, r, m: ["train", "smoke", "data.dataset=mnist", "data.options={}", "data.download=false",
                                       f"data.dir={_truncated_idx(t, m)}", f"output.dir={t}", *FAST],
     ["t10k-images-idx3-ubyte.gz is truncated", "expected"]),
    ("output-dir-under-a-file", lambda t, r, m: ["train", "smoke", f"output.dir={_a_file(t)}/sub", *FAST],
     ["cannot create run directory", "Not a directory"]),
    ("output-disk-full", lambda t, r, m: _disk_full(m, ["train", "smoke", f"output.dir={t}", *FAST]),
     ["cannot write", "No space left on device"]),
    ("eval-other-model", lambda t, r, m: ["eval", str(tampered_copy(r["done"], t / "x", _other_model)
                                                      / "checkpoints/best.pt")],
     ["does not match", "convnet", "'width': 16", "size mismatch"]),
    ("eval-other-class-count", lambda t, r, m: ["eval", str(tampered_copy(r["done"], t / "x", _fewer_classes)
                                                            / "checkpoints/best.pt")],
     ["does not match", "5 classes"]),
    ("resume-other-model", lambda t, r, m: ["resume", str(tampered_copy(r["open"], t / "x", _other_model))],
     ["does not match", "'width': 16"]),
    ("predict-other-class-count", lambda t, r, m: ["predict", str(tampered_copy(r["done"], t / "x", _fewer_classes)
                                                                  / "checkpoints/last.pt"),
                                                   str(_image_dir(t)[0])], ["does not match", "5 classes"]),
    ("eval-garbage-checkpoint", lambda t, r, m: ["eval", str(_garbage(t / "model.pt"))],
     ["model.pt", "not a cifarlab checkpoint"]),
    ("eval-missing-checkpoint", lambda t, r, m: ["eval", str(t / "nope.pt")], ["nope.pt does not exist"]),
    ("eval-directory-as-checkpoint", lambda t, r, m: ["eval", str(r["done"])], ["is a directory", ".pt file"]),
    ("resume-truncated-checkpoint", lambda t, r, m: ["resume", str(_truncate_last(tampered_copy(r["open"], t / "x",
                                                                                                 lambda p: None)))],
     ["last.pt is truncated"]),
    ("predict-unreadable-image", lambda t, r, m: ["predict", str(r["done"] / "checkpoints/best.pt"),
                                                  str(_image_dir(t)[0])],
     ["photo.png", "cannot read", "as an image"]),
    ("predict-missing-image", lambda t, r, m: ["predict", str(r["done"] / "checkpoints/best.pt"),
                                               str(_image_dir(t)[1])],
     ["missing.png does not exist"]),
    ("gradcam-unknown-images-file", lambda t, r, m: ["gradcam", str(r["done"] / "checkpoints/best.pt"),
                                                     "--images", str(t / "cat.png"), "--out", str(t / "g.png")],
     ["cat.png does not exist"]),
    ("resume-finished-run", lambda t, r, m: ["resume", str(r["done"])],
     ["already finished", "1/1 epochs", "cifarlab train"]),
    ("resume-missing-run", lambda t, r, m: ["resume", str(t / "runs" / "smoke" / "never")], ["does not exist"]),
    ("resume-dir-without-checkpoint", lambda t, r, m: ["resume", str(t)], ["no checkpoints/last.pt"]),
    ("compare-without-summary", lambda t, r, m: ["compare", str(t), "--out", str(t / "cmp")], ["has no summary.json"]),
    ("lr-find-end-below-start", lambda t, r, m: ["lr-find", "smoke", "lr_find.end_lr=1e-8", "--out", str(t / "lr")],
     ["lr_find.end_lr must be greater than start_lr"]),
]


def _a_file(tmp: Path) -> Path:
    path = tmp / "plain-file"
    path.write_text("a file, not a folder\n")
    return path


def _garbage(path: Path) -> Path:
    path.write_bytes(os.urandom(2048))
    return path


def _truncate_last(run_dir: Path) -> Path:
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    return run_dir


def _disk_full(monkeypatch, argv: list[str]) -> list[str]:
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("cifarlab.atomic.os.fsync", fsync)
    return argv


def test_the_table_has_at_least_20_cases():
    assert len(CASES) >= 20 and len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_bad_input_gives_one_line_exit_2_and_changes_nothing(case, tmp_path, runs, monkeypatch, capsys):
    _, setup, words = case
    monkeypatch.chdir(tmp_path)
    argv = setup(tmp_path, runs, monkeypatch)
    # not the runs, not the inputs, no half a run dir
    assert_refused(argv, words, {**runs, "tmp": tmp_path}, capsys, tmp_path)


def test_serve_checksum_mismatch_on_download(tmp_path, monkeypatch, capsys):
    """A download whose md5 is wrong is removed and named; nothing is left in the data dir."""
    served = tmp_path / "www"
    served.mkdir()
    (served / "cifar-10-python.tar.gz").write_bytes(b"tampered bytes")
    with serve(served) as (url, requests):
        monkeypatch.setitem(sources.SOURCES, "cifar10", dataclasses.replace(sources.SOURCES["cifar10"], base_url=url))
        code = main(["train", "smoke", "data.dataset=cifar10", "data.options={}", f"data.dir={tmp_path / 'data'}",
                     f"output.dir={tmp_path / 'runs'}", *FAST])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "download of" in err and "expected md5" in err
    assert requests == ["/cifar-10-python.tar.gz"]
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
