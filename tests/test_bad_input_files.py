"""Bad files, round 2 (issue 11): recipe files, numbers, archives, images. One table, like test_bad_input.py:
each case runs the CLI (`cifarlab.cli.main`) and gets exit 2, ONE line on stderr naming the problem, no
traceback, and every file that existed keeps its sha256 (nothing written, changed or removed).

Alias bombs run as real processes (`python -m cifarlab`) under a memory limit, so that a regression fails
instead of taking the machine's memory.
The atomic writers (cifarlab.atomic) and safe extraction have their own tests at the end.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import os
import stat
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from _formats import cifar_batch
from _runs import assert_refused, finished_and_open_runs
from cifarlab import atomic
from cifarlab.cli import main
from cifarlab.data import sources
from cifarlab.data.download import fetch, safe_extract
from cifarlab.data.images import MAX_PIXELS, read_image
from cifarlab.errors import UserError

FAST = ["train.threads=1", "output.tensorboard=false", "output.progress=none", "output.report=false"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_runs) -> Path:
    """A finished 1-epoch smoke run: its checkpoint feeds predict and gradcam, its config.yaml goes back in."""
    return finished_and_open_runs(tmp_path_factory.mktemp("runs"), shared_runs)["done"]


# ------------------------------------------------------------------ 1. recipe files

def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


DUPLICATE_SECTION = "optim:\n  lr: 0.1\ntrain:\n  epochs: 2\noptim:\n  momentum: 0.5\n"


def _laughs(levels: int = 9, width: int = 9, anchor_line: str = "") -> str:
    """The classic billion laughs: 9 levels of 9 aliases each, about 400 bytes, 9**9 values expanded."""
    lines = [anchor_line + 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        cur, prev = chr(ord("a") + i), chr(ord("a") + i - 1)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _laughs_recipe(tmp: Path) -> Path:
    body = "".join(f"    {line}\n" for line in _laughs().splitlines())  # inside data.options, a free-form mapping
    return _write(tmp / "laughs.yaml", "data:\n  options:\n" + body)


LAUGHS_FLOW = "{" + ", ".join(
    ['a: &a [1,1,1,1,1,1,1,1,1,1]'] + [f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [" + ",".join(
        [f"*{chr(ord('a') + i - 1)}"] * 10) + "]" for i in range(1, 8)]) + "}"


def _config_yaml_with(run_dir: Path, tmp: Path, extra: str) -> Path:
    """The run's own config.yaml, copied and changed: what a user passes back to `train`."""
    return _write(tmp / "back" / "config.yaml", (run_dir / "config.yaml").read_text() + extra)


RECIPE_CASES = [
    ("recipe-duplicate-section", lambda t, r, m: ["show", str(_write(t / "dup.yaml", DUPLICATE_SECTION))],
     ["dup.yaml", "duplicate key 'optim'", "line 5"]),
    ("recipe-duplicate-section-train", lambda t, r, m: ["train", str(_write(t / "dup.yaml", DUPLICATE_SECTION)),
                                                        f"output.dir={t}", *FAST],
     ["dup.yaml", "duplicate key 'optim'"]),
    ("recipe-duplicate-nested-key", lambda t, r, m: ["show", str(_write(t / "d.yaml", "optim: {lr: 0.1, lr: 0.2}\n"))],
     ["d.yaml", "duplicate key 'lr'"]),
    ("recipe-duplicate-top-key", lambda t, r, m: ["show", str(_write(t / "d.yml", "name: a\nseed: 1\nname: b\n"))],
     ["d.yml", "duplicate key 'name'", "line 3"]),
    ("config-yaml-back-with-duplicate", lambda t, r, m: ["train", str(_config_yaml_with(r, t, "train:\n  epochs: 1\n")),
                                                         f"output.dir={t}", *FAST],
     ["config.yaml", "duplicate key 'train'"]),
    ("recipe-latin1", lambda t, r, m: ["show", str(_write(t / "latin.yaml", "description: café\n".encode("latin-1")))],
     ["latin.yaml", "not UTF-8", "0xe9"]),
    ("recipe-utf16", lambda t, r, m: ["show", str(_write(t / "wide.yaml", "name: wide\n".encode("utf-16")))],
     ["wide.yaml", "not UTF-8"]),
    ("recipe-binary", lambda t, r, m: ["train", str(_write(t / "model.yaml", bytes(range(256)) * 4)), *FAST],
     ["model.yaml", "not UTF-8"]),
    ("config-yaml-back-not-utf8", lambda t, r, m: ["train", str(_write(
        t / "c" / "config.yaml", (r / "config.yaml").read_bytes() + b"# \xff\n"))],
     ["config.yaml", "not UTF-8", "0xff"]),
    ("recipe-control-character", lambda t, r, m: ["show", str(_write(t / "nul.yaml", "name: a\x00b\n"))],
     ["nul.yaml", "not valid YAML"]),
    ("recipe-unclosed-bracket", lambda t, r, m: ["show", str(_write(t / "open.yaml", "optim: {lr: [0.1\nseed: 1\n"))],
     ["open.yaml", "not valid YAML", "line"]),
    ("recipe-billion-laughs", lambda t, r, m: ["show", str(_write(t / "lol.yaml", _laughs()))],
     ["lol.yaml", "aliases expand to more than"]),
    ("recipe-billion-laughs-in-options", lambda t, r, m: ["train", str(_laughs_recipe(t)), *FAST],
     ["laughs.yaml", "aliases expand to more than"]),
    ("recipe-self-alias", lambda t, r, m: ["show", str(_write(t / "loop.yaml", "data: &d {options: {again: *d}}\n"))],
     ["loop.yaml", "alias refers to itself"]),
    ("recipe-too-large", lambda t, r, m: ["show", str(_write(t / "big.yaml", "# " + "x" * (2 << 20) + "\n"))],
     ["big.yaml", "larger than 1 MiB"]),
    ("recipe-fifo", lambda t, r, m: ["show", str(_fifo(t / "pipe.yaml"))], ["pipe.yaml", "not a regular file"]),
    ("recipe-directory", lambda t, r, m: ["show", str(_write(t / "dir.yaml" / "x", "").parent)],
     ["dir.yaml", "is a directory"]),
    ("override-duplicate-key", lambda t, r, m: ["show", "smoke", "data.options={num_train: 64, num_train: 128}"],
     ["data.options=", "duplicate key 'num_train'"]),
    ("override-billion-laughs", lambda t, r, m: ["show", "smoke", f"data.options={LAUGHS_FLOW}"],
     ["override", "aliases expand to more than"]),
    ("override-self-alias", lambda t, r, m: ["show", "smoke", "data.options=&o {x: *o}"],
     ["override", "alias refers to itself"]),
    ("override-not-utf8", lambda t, r, m: ["show", "smoke", os.fsdecode(b"name=caf\xe9")],
     ["override", "not valid UTF-8"]),
]


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


# ------------------------------------------------------------------ 2. numbers

def _show(*overrides: str):
    return lambda t, r, m: ["show", "smoke", *overrides]


NUMBER_CASES = [
    ("lr-inf", _show("optim.lr=.inf"), ["optim.lr", "finite number", "inf"]),
    ("lr-inf-train", lambda t, r, m: ["train", "smoke", "optim.lr=.inf", f"output.dir={t}", *FAST],
     ["optim.lr", "finite number"]),
    ("lr-nan", _show("optim.lr=.nan"), ["optim.lr", "finite number"]),
    ("lr-1e400", _show("optim.lr=1e400"), ["optim.lr", "finite number"]),
    ("lr-huge-int", _show("optim.lr=" + "9" * 400), ["optim.lr", "characters"]),
    ("weight-decay-inf", _show("optim.weight_decay=.inf"), ["optim.weight_decay", "finite number"]),
    ("grad-clip-inf", _show("optim.grad_clip=.inf"), ["optim.grad_clip", "finite number"]),
    ("betas-inf", _show("optim.betas=[0.9, .inf]"), ["optim.betas", "finite number"]),
    ("std-nan", _show("data.std=[0.25, .nan, 0.25]"), ["data.std.1", "finite number", "nan"]),
    ("std-zero", _show("data.std=[0.25, 0, 0.25]"), ["data.std.1", "greater than 0"]),
    ("mean-inf", _show("data.mean=[.inf, 0.5, 0.5]"), ["data.mean.0", "finite number"]),
    ("schedule-min-lr-nan", _show("schedule.min_lr=.nan"), ["schedule.min_lr", "finite number"]),
    ("peak-epoch-inf", _show("schedule.peak_epoch=.inf"), ["schedule.peak_epoch", "finite number"]),
    ("lr-peak-negative", _show("schedule.lr_peak=-1"), ["schedule.lr_peak:", "greater than 0"]),
    ("lr-peak-inf", _show("schedule.lr_peak=.inf"), ["schedule.lr_peak:", "finite number"]),
    ("model-options-inf", _show("model.options={width: .inf}"), ["model.options", "width", "finite number"]),
    ("data-options-nested-nan", _show("data.options={a: {b: [1, .nan]}}"), ["data.options", "a.b[1]", "finite"]),
    ("epochs-true", _show("train.epochs=true"), ["train.epochs", "not true/false"]),
    ("epochs-true-train", lambda t, r, m: ["train", "smoke", "train.epochs=true", f"output.dir={t}", *FAST],
     ["train.epochs", "not true/false"]),
    ("batch-size-false", _show("train.batch_size=false"), ["train.batch_size", "not true/false"]),
    ("lr-yes", _show("optim.lr=yes"), ["optim.lr", "not true/false"]),
    ("milestones-bool", _show("schedule.milestones=[true, 3]"), ["schedule.milestones", "not true/false"]),
    ("ema-true", _show("train.ema=true"), ["train.ema", "not true/false"]),
    ("download-1", _show("data.download=1"), ["data.download", "true or false", "1"]),
    ("seed-beyond-64-bits", _show(f"seed={2**64 + 1}"), ["seed:", "64 bits", str(2**64 + 1)]),
    ("seed-huge", _show("seed=123456789012345678901234567890"), ["seed:", "9223372036854775807"]),
    ("seed-below-64-bits", _show(f"seed={-2**63 - 1}"), ["seed:", "-9223372036854775808", "64 bits"]),
    ("epochs-negative", _show("train.epochs=-3"), ["train.epochs", "greater than or equal to 1"]),
    ("subset-zero", _show("data.test_subset=0"), ["data.test_subset", "greater than or equal to 1"]),
    ("epochs-beyond-64-bits", _show(f"train.epochs={2**70}"), ["train.epochs", "64 bits"]),
    ("train-subset-beyond-64-bits", _show("data.train_subset=99999999999999999999999"),
     ["data.train_subset", "64 bits"]),
    ("options-int-beyond-64-bits", _show(f"data.options={{num_train: {2**80}}}"),
     ["data.options", "num_train", "64 bits"]),
    ("milestones-zero", _show("schedule.milestones=[0, 3]"), ["schedule.milestones.0", "greater than or equal to 1"]),
    ("recipe-file-lr-inf", lambda t, r, m: ["show", str(_write(t / "inf.yaml", "optim:\n  lr: .inf\n"))],
     ["optim.lr", "finite number"]),
    ("config-yaml-back-epochs-yes", lambda t, r, m: ["train", str(_write(
        t / "c" / "config.yaml", (r / "config.yaml").read_text().replace("  epochs: 1\n", "  epochs: yes\n"))),
        f"output.dir={t}", *FAST], ["train.epochs", "not true/false"]),
]


# ------------------------------------------------------------------ 3. archives

def _member(tar: tarfile.TarFile, name: str, kind: str = "file", data: bytes = b"x", link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                 "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
    info.linkname = link
    if kind == "file":
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def _cifar_with(tmp: Path, monkeypatch, extra: list[tuple], first: bool = False) -> Path:
    """A CIFAR-10 archive (valid batches) with `extra` members, its md5 made the expected one; -> data dir.
    Extra members come after the valid ones (or before them with `first`): either way nothing is written."""
    root = tmp / "data" / "cifar10"
    root.mkdir(parents=True)
    (tmp / "outside").mkdir()
    _write(tmp / "outside" / "keep.txt", "must not change\n")
    images = np.zeros((2, 3, 32, 32), np.uint8)
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        if first:
            for args in extra:
                _member(tar, *args)
        _member(tar, "cifar-10-batches-py", "dir")
        import pickle

        for name in ("data_batch_1", "test_batch"):
            _member(tar, f"cifar-10-batches-py/{name}", data=pickle.dumps(cifar_batch(images, np.array([0, 1]))))
        if not first:
            for args in extra:
                _member(tar, *args)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(sources.SOURCES, "cifar10", dataclasses.replace(
        sources.SOURCES["cifar10"], files=(("cifar-10-python.tar.gz", md5),)))
    return tmp / "data"


def _train_on(data_dir: Path, tmp: Path) -> list[str]:
    return ["train", "smoke", "data.dataset=cifar10", "data.options={}", f"data.dir={data_dir}", f"output.dir={tmp}",
            *FAST]


def _archive(*extra, first=False):
    return lambda t, r, m: _train_on(_cifar_with(t, m, list(extra), first), t)


def _planted_link(tmp: Path, run_dir: Path, monkeypatch) -> list[str]:
    """A folder under the data dir that is already a link out of it: members must not be written through it."""
    data = _cifar_with(tmp, monkeypatch, [])
    os.symlink(tmp / "outside", data / "cifar10" / "cifar-10-batches-py")
    return _train_on(data, tmp)


ARCHIVE_CASES = [
    ("archive-symlink-inside", _archive(("cifar-10-batches-py/alias", "sym", b"", "data_batch_1")),
     ["cifar-10-python.tar.gz is unsafe", "'cifar-10-batches-py/alias'", "symbolic link", "nothing was extracted"]),
    ("archive-symlink-outside", _archive(("cifar-10-batches-py/passwd", "sym", b"", "/etc/passwd")),
     ["'cifar-10-batches-py/passwd'", "symbolic link", "/etc/passwd"]),
    ("archive-symlink-first", _archive(("cifar-10-batches-py", "sym", b"", "../../outside"), first=True),
     ["'cifar-10-batches-py'", "symbolic link", "../../outside"]),
    ("archive-link-chain", _archive(("d", "sym", b"", "."), ("d/e", "sym", b"", ".."), ("e/escaped.txt", "file", b"x")),
     ["member 'd'", "symbolic link"]),
    ("archive-hard-link", _archive(("cifar-10-batches-py/copy", "hard", b"", "cifar-10-batches-py/data_batch_1")),
     ["'cifar-10-batches-py/copy'", "hard link"]),
    ("archive-hard-link-outside", _archive(("cifar-10-batches-py/shadow", "hard", b"", "/etc/passwd")),
     ["'cifar-10-batches-py/shadow'", "hard link", "/etc/passwd"]),
    ("archive-hard-link-chain", _archive(("h1", "hard", b"", "missing"), ("h2", "hard", b"", "h1")),
     ["member 'h1'", "hard link"]),
    ("archive-absolute-path", _archive(("/tmp/cifarlab-evil.txt", "file", b"x")),
     ["'/tmp/cifarlab-evil.txt'", "absolute path"]),
    ("archive-dotdot-in-the-middle", _archive(("cifar-10-batches-py/../../../evil.txt", "file", b"x")),
     ["'cifar-10-batches-py/../../../evil.txt'", "outside"]),
    ("archive-char-device", _archive(("cifar-10-batches-py/null", "chr")),
     ["'cifar-10-batches-py/null'", "device file"]),
    ("archive-block-device", _archive(("sda", "blk")), ["member 'sda'", "device file"]),
    ("archive-fifo", _archive(("cifar-10-batches-py/pipe", "fifo")), ["'cifar-10-batches-py/pipe'", "FIFO"]),
    ("archive-through-existing-link", _planted_link, ["'cifar-10-batches-py", "outside", "existing link"]),
]


# ------------------------------------------------------------------ 4. images

def png_bytes(pixels: np.ndarray | None, bit_depth: int, color_type: int, size: tuple[int, int] | None = None,
              idat: bytes | None = None) -> bytes:
    """A PNG written by hand (PIL cannot write 16-bit RGB, nor lie about its size): IHDR, one IDAT, IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    if size is None:
        height, width = pixels.shape[:2]
    else:
        width, height = size
    if idat is None:
        dtype = ">u2" if bit_depth == 16 else "u1"
        rows = pixels.reshape(height, -1).astype(dtype)
        idat = zlib.compress(b"".join(b"\0" + row.tobytes() for row in rows))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _bomb(tmp: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A few hundred bytes that claim width x height pixels (10 gigapixels by default)."""
    return _write(tmp / "bomb.png", png_bytes(None, 8, 2, (width, height), zlib.compress(b"\0" * 4096)))


def _good_png(tmp: Path, name: str = "good.png") -> Path:
    return _write(tmp / name, png_bytes(np.full((32, 32, 3), 128, np.uint8), 8, 2))


def _truncated_png(tmp: Path) -> Path:
    data = png_bytes(np.random.default_rng(0).integers(0, 256, (32, 32, 3)), 8, 2)
    return _write(tmp / "cut.png", data[: len(data) // 2])


def _bad_crc_png(tmp: Path) -> Path:
    data = bytearray(png_bytes(np.random.default_rng(0).integers(0, 256, (32, 32, 3)), 8, 2))
    data[-20] ^= 0xFF  # inside IDAT's compressed stream
    return _write(tmp / "crc.png", bytes(data))


def _predict(*images):
    return lambda t, r, m: ["predict", str(r / "checkpoints" / "best.pt"), *[str(i(t)) for i in images]]


def _gradcam(image):
    return lambda t, r, m: ["gradcam", str(r / "checkpoints" / "best.pt"), "--images", str(image(t)),
                            "--out", str(t / "g.png")]


IMAGE_CASES = [
    ("predict-bomb-10-gigapixels", _predict(_bomb), ["bomb.png", "megapixels", "scale it down"]),
    ("predict-bomb-81-megapixels", _predict(lambda t: _bomb(t, 9000, 9000)),
     ["bomb.png", "9000x9000", "64 megapixels"]),
    ("predict-bomb-after-a-good-image", _predict(_good_png, _bomb), ["bomb.png", "megapixels"]),
    ("gradcam-bomb", _gradcam(_bomb), ["bomb.png", "megapixels"]),
    ("predict-truncated-png", _predict(_truncated_png), ["cut.png", "cannot read", "truncated"]),
    ("gradcam-truncated-png", _gradcam(_truncated_png), ["cut.png", "cannot read"]),
    ("predict-corrupt-png", _predict(_bad_crc_png), ["crc.png", "cannot read"]),
    ("predict-empty-file", _predict(lambda t: _write(t / "empty.png", b"")), ["empty.png", "cannot read"]),
    ("predict-png-header-only", _predict(lambda t: _write(t / "head.png", b"\x89PNG\r\n\x1a\n")),
     ["head.png", "cannot read"]),
    ("predict-fifo", _predict(lambda t: _fifo(t / "pipe.png")), ["pipe.png", "not a regular file"]),
    ("predict-device", _predict(lambda t: Path("/dev/zero")), ["/dev/zero", "not a regular file"]),
    ("gradcam-directory", _gradcam(lambda t: _write(t / "pics.png" / "x", "").parent), ["pics.png", "is a directory"]),
]

CASES = [*RECIPE_CASES, *NUMBER_CASES, *ARCHIVE_CASES, *IMAGE_CASES]


def test_the_table_covers_each_class():
    assert len({case[0] for case in CASES}) == len(CASES)
    assert min(len(RECIPE_CASES), len(NUMBER_CASES), len(ARCHIVE_CASES), len(IMAGE_CASES)) >= 10


# Cases that, were their fix lost, would eat all memory (alias bombs) or block (a FIFO opened for reading):
# they run as real processes under a memory and time limit, so that a regression fails the test, not the machine.
IN_A_PROCESS = {"recipe-billion-laughs", "recipe-billion-laughs-in-options", "recipe-self-alias",
                "override-billion-laughs", "override-self-alias", "recipe-fifo", "predict-fifo"}


# A case in its own process pays torch's import (seconds): marked slow, with any other case over ~2 s.
SLOW = IN_A_PROCESS


@pytest.mark.parametrize("case", [pytest.param(case, id=case[0], marks=[pytest.mark.slow] * (case[0] in SLOW))
                                  for case in CASES])
def test_bad_file_gives_one_line_exit_2_and_changes_nothing(case, tmp_path, run, monkeypatch, capsys):
    name, setup, words = case
    monkeypatch.chdir(tmp_path)
    argv = setup(tmp_path, run, monkeypatch)
    assert_refused(argv, words, {"run": run, "tmp": tmp_path}, capsys, tmp_path, name in IN_A_PROCESS)
    if argv[0] == "train":  # no run directory, no extracted member, nothing beside the archive
        assert not (tmp_path / "smoke").exists() and not (tmp_path / "runs").exists()
    assert not Path("/tmp/cifarlab-evil.txt").exists()


def test_the_alias_bombs_are_small():
    assert len(_laughs()) < 500 and len(LAUGHS_FLOW) < 500


def test_small_anchors_and_merge_keys_still_work(tmp_path, capsys):
    recipe = _write(tmp_path / "anchors.yaml", "optim: &o {lr: 0.05, momentum: 0.8}\n"
                    "schedule: {name: step, <<: {gamma: 0.5, step_size: 3}, step_size: 4}\n"
                    "data:\n  options: {num_train: 64, sizes: &s [1, 2, 3], again: *s}\n")
    assert main(["show", str(recipe)]) == 0
    shown = capsys.readouterr().out
    assert "lr: 0.05" in shown and "gamma: 0.5" in shown and "step_size: 4" in shown


def test_floats_from_strings_and_utf8_bom_still_work(tmp_path, capsys):
    recipe = _write(tmp_path / "bom.yaml", "\ufeffdescription: café\noptim: {lr: 1e-3}\n".encode("utf-8"))
    assert main(["show", str(recipe), "optim.weight_decay=5e-4", "seed=9223372036854775807", "data.download=no"]) == 0
    shown = capsys.readouterr().out
    assert main(["show", "smoke", f"seed={-2**63}"]) == 0 and f"seed: {-2**63}" in capsys.readouterr().out
    assert "lr: 0.001" in shown and "weight_decay: 0.0005" in shown and "café" in shown and "download: false" in shown


# ------------------------------------------------------------------ 16-bit images

def test_16_bit_png_reads_as_its_8_bit_equivalent(tmp_path):
    rng = np.random.default_rng(1)
    gray, rgb = rng.integers(0, 256, (20, 24)), rng.integers(0, 256, (20, 24, 3))
    files = {
        "gray8": png_bytes(gray, 8, 0), "gray16": png_bytes(gray * 257, 16, 0),
        "rgb8": png_bytes(rgb, 8, 2), "rgb16": png_bytes(rgb * 257, 16, 2),
    }
    paths = {name: _write(tmp_path / f"{name}.png", data) for name, data in files.items()}
    for channels in (1, 3):
        for size in (32, 20, 8):
            for kind in ("gray", "rgb"):
                eight, sixteen = (read_image(paths[f"{kind}{bits}"], channels, size) for bits in (8, 16))
                assert sixteen.dtype == torch.uint8 and sixteen.shape == (channels, size, size)
                assert torch.equal(sixteen, eight), (kind, channels, size)
    # Values that are not multiples of 257 land on the nearest 8-bit level (within rounding).
    deep = rng.integers(0, 65536, (16, 16))
    read = read_image(_write(tmp_path / "deep.png", png_bytes(deep, 16, 0)), 1, 16)[0].numpy().astype(int)
    assert np.abs(read - deep / 257).max() <= 0.5 + 1e-9
    assert read.max() > 250 and read.min() < 5  # not clipped at 255, not squeezed into a corner


def test_16_bit_png_predicts_like_its_8_bit_equivalent(tmp_path, run, capsys):
    gray = np.random.default_rng(2).integers(0, 256, (32, 32)) // 2 + 60
    sixteen = _write(tmp_path / "b.png", png_bytes(gray * 257, 16, 0))
    eight = _write(tmp_path / "c.png", png_bytes(gray, 8, 0))
    assert main(["predict", str(run / "checkpoints" / "best.pt"), str(sixteen), str(eight)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split(": ", 1)[1] == lines[1].split(": ", 1)[1]


def test_images_below_the_pixel_cap_are_read(tmp_path):
    assert MAX_PIXELS == 64_000_000
    path = _write(tmp_path / "wide.png", png_bytes(np.zeros((4, 2000, 3), np.uint8), 8, 2))
    assert read_image(path, 3, 32).shape == (3, 32, 32)


# ------------------------------------------------------------------ safe extraction, directly

def test_safe_extract_writes_files_itself_with_plain_permissions(tmp_path, monkeypatch):
    archive = tmp_path / "ok.tar"
    with tarfile.open(archive, "w") as tar:
        _member(tar, "top", "dir")
        info = tarfile.TarInfo("top/setuid")
        info.size, info.mode = 5, 0o4777
        tar.addfile(info, io.BytesIO(b"hello"))
        _member(tar, "top/deeper/file", data=b"payload")  # no folder member: made on the way
    monkeypatch.delattr(tarfile, "data_filter", raising=False)  # as on Python 3.10 before 3.10.12
    monkeypatch.setattr(tarfile.TarFile, "extractall", lambda *a, **k: pytest.fail("extractall is not used"))
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "top" / "setuid").read_bytes() == b"hello"
    assert (tmp_path / "out" / "top" / "deeper" / "file").read_bytes() == b"payload"
    mode = stat.S_IMODE((tmp_path / "out" / "top" / "setuid").stat().st_mode)
    assert not mode & (stat.S_ISUID | stat.S_IXUSR)
    assert sorted(p.name for p in (tmp_path / "out" / "top").iterdir()) == ["deeper", "setuid"]  # no temporaries


def test_safe_extract_refuses_the_link_chain_without_tarfile_filters(tmp_path, monkeypatch):
    archive = tmp_path / "chain.tar"
    with tarfile.open(archive, "w") as tar:
        _member(tar, "d", "sym", link=".")
        _member(tar, "d/e", "sym", link="..")
        _member(tar, "e/file", data=b"outside!")
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    with pytest.raises(UserError, match=r"chain.tar is unsafe: member 'd' is a symbolic link"):
        safe_extract(archive, tmp_path / "out" / "deep")
    assert not (tmp_path / "out").exists() and not (tmp_path / "file").exists()


# ------------------------------------------------------------------ cifarlab.atomic

def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(atomic.TEMP_SUFFIX))


def test_atomic_write_replaces_and_keeps_previous_without_a_gap(tmp_path, monkeypatch):
    path, prev = tmp_path / "last.pt", tmp_path / "last.prev.pt"
    atomic.atomic_write(path, lambda f: f.write(b"one"), keep_previous=prev)
    assert path.read_bytes() == b"one" and not prev.exists()
    real_replace = os.replace

    def replace(src, dst):  # at every rename, last.pt is there and whole
        assert path.read_bytes() in (b"one", b"two")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic.atomic_write(path, lambda f: f.write(b"two"), keep_previous=prev)
    assert path.read_bytes() == b"two" and prev.read_bytes() == b"one" and _temps(tmp_path) == []
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o666 & ~atomic._UMASK


def test_keep_previous_copies_where_hard_links_fail(tmp_path, monkeypatch):
    path, prev = tmp_path / "best.pt", tmp_path / "best.prev.pt"
    atomic.atomic_write_bytes(path, b"old")

    def no_links(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "link", no_links)
    atomic.atomic_write_bytes(path, b"new", keep_previous=prev)
    assert path.read_bytes() == b"new" and prev.read_bytes() == b"old" and _temps(tmp_path) == []


def test_atomic_write_never_follows_a_planted_symlink(tmp_path):
    outside = _write(tmp_path / "outside.txt", "precious\n")
    folder = tmp_path / "run"
    folder.mkdir()
    os.symlink(outside, folder / "summary.json")
    for pid_guess in range(os.getpid() - 2, os.getpid() + 3):  # the old, predictable temporary names
        os.symlink(outside, folder / f".summary.json.tmp-{pid_guess}")
        os.symlink(outside, folder / f"summary.json.tmp{pid_guess}")
    atomic.atomic_write_text(folder / "summary.json", "{}\n")
    assert outside.read_text() == "precious\n"
    assert not (folder / "summary.json").is_symlink() and (folder / "summary.json").read_text() == "{}\n"


@pytest.mark.parametrize("failure", ["exception", "disk-full", "interrupt"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, failure):
    path = _write(tmp_path / "config.yaml", "old: 1\n")

    def write(handle):
        handle.write("new: 2\n" * 1000)
        if failure == "exception":
            raise RuntimeError("boom")
        if failure == "interrupt":
            raise KeyboardInterrupt

    if failure == "disk-full":
        def fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(atomic.os, "fsync", fsync)
    expected = {"exception": RuntimeError, "interrupt": KeyboardInterrupt, "disk-full": atomic.WriteError}[failure]
    with pytest.raises(expected) as err:
        atomic.atomic_write(path, write, mode="w")
    if failure == "disk-full":
        assert str(err.value) == f"cannot write {path}: No space left on device"
        assert isinstance(err.value, UserError) and isinstance(err.value, OSError)
    assert path.read_text() == "old: 1\n" and _temps(tmp_path) == []


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = _write(tmp_path / f".last.pt.{dead.pid}.abc123{atomic.TEMP_SUFFIX}", b"half")
    live = _write(tmp_path / f".last.pt.{os.getppid()}.def456{atomic.TEMP_SUFFIX}", b"writing")
    fresh = _write(tmp_path / f".last.pt.{dead.pid}.ghi789{atomic.TEMP_SUFFIX}", b"just now")
    old = os.path.getmtime(stale) - 3600
    os.utime(stale, (old, old))
    os.utime(live, (old, old))
    atomic.atomic_write_bytes(tmp_path / "last.pt", b"whole")
    assert not stale.exists() and live.exists() and fresh.exists()
    assert (tmp_path / "last.pt").read_bytes() == b"whole"


def test_append_line_adds_whole_lines_and_fsyncs(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "metrics.csv"
    atomic.append_line(path, "kind,epoch")
    atomic.append_line(path, "epoch,1\n")
    atomic.append_line(path, "step,2", durable=False)
    assert path.read_text() == "kind,epoch\nepoch,1\nstep,2\n" and len(synced) == 2
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(atomic.WriteError, match="cannot write .*metrics.csv: Input/output error"):
        atomic.append_line(path, "epoch,2")


def test_fetch_leaves_nothing_on_a_bad_checksum_or_a_dead_server(tmp_path):
    from _formats import serve

    served = tmp_path / "www"
    _write(served / "file.bin", b"payload")
    data = tmp_path / "data"
    with serve(served) as (url, _):
        with pytest.raises(UserError, match="is corrupt: expected md5"):
            fetch(url + "file.bin", data / "file.bin", "0" * 32)
        assert fetch(url + "file.bin", data / "ok.bin", hashlib.md5(b"payload").hexdigest()).read_bytes() == b"payload"
    with pytest.raises(UserError, match="could not download"):
        fetch(url + "file.bin", data / "gone.bin", "0" * 32, timeout=5)
    assert sorted(p.name for p in data.iterdir()) == ["ok.bin"]
