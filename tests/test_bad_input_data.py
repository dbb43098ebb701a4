"""Bad input, round 3 (issue 17): data identity, every data entry path, degenerate data, the environment,
model options and export. Every case: ONE line naming the problem and what is allowed, exit code 2 (a
`UserError` from Python), no traceback, no run directory created, and every file already there keeps its
sha256.

Each case is (id, how to set it up, words the message must contain). `setup(tmp, fixtures, monkeypatch)`
returns CLI arguments (run in-process, as `cifarlab.cli.main`), or a callable for the Python API. The
images are small PNG folders written here (12x12, two classes); the runs train the `smoke` recipe on them.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _runs import FAST, SRC, SharedRuns, assert_refused, only_run, tampered_copy, tree_hashes
from cifarlab.cli import main
from cifarlab.data.dataset import Dataset, Split
from cifarlab.errors import UserError

CLASSES = ("ant", "bee")
FOLDER_RUN = ["data.dataset=folder", "data.options={}", "train.epochs=1", "schedule.peak_epoch=0.5",
              "train.batch_size=16", *FAST]


def _png_folder(root: Path, classes=CLASSES, size: int = 12, per_class=(24, 8), seed: int = 0,
                constant: bool = False) -> Path:
    """root/{train,test}/<class>/<i>.png: class k is bright in quadrant k (learnable), plus noise."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test"), per_class):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                pixels = rng.integers(0, 100, (size, size, 3), dtype=np.uint8)
                pixels[: size // 2, k * size // 2: (k + 1) * size // 2] += 120
                if constant:
                    pixels[:] = 90
                Image.fromarray(pixels).save(folder / f"{index:03d}.png")
    return root


def _renamed(original: Path, dest: Path, old: str = "bee", new: str = "wasp") -> Path:
    shutil.copytree(original, dest)
    for split in ("train", "test"):
        (dest / split / old).rename(dest / split / new)
    return dest


def _one_image_changed(original: Path, dest: Path, split: str = "train") -> Path:
    shutil.copytree(original, dest)
    path = dest / split / "ant" / "000.png"
    Image.fromarray(np.full((12, 12, 3), 7, np.uint8)).save(path)
    return dest


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, shared_runs):
    return folder_run_copy(tmp_path_factory.mktemp("folder"), shared_runs)


def _train_folder_run(root: Path) -> None:
    images = _png_folder(root / "images")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIFARLAB_DATA", str(root / "cache"))
        assert main(["train", "smoke", f"data.dir={images}", f"output.dir={root / 'runs'}", *FOLDER_RUN]) == 0


def folder_run_copy(root: Path, shared: SharedRuns) -> dict:
    """A finished 1-epoch run on a two-class PNG folder, with its folder and the cache folder: this module's
    copy under `root` of the one trained per session (its config's data.dir names the session's folder, whose
    images are the same)."""
    shared.copy("folder-run", _train_folder_run, root)
    return {"run": only_run(root / "runs"), "images": root / "images", "cache": root / "cache"}


def _arrays(images: np.ndarray, labels, classes=None, test=None):
    """`data=` for cifarlab.train: the same images as train and test unless `test` is given."""
    x_test, y_test = test if test is not None else (images, labels)
    return (images, np.asarray(labels), x_test, np.asarray(y_test), *([classes] if classes else []))


def _random_images(count: int, size: int = 12, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, channels, size, size), dtype=np.uint8)


def _dataset(classes=CLASSES, labels=None, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)) -> Dataset:
    images = torch.from_numpy(_random_images(16))
    labels = torch.tensor(labels if labels is not None else [k % 2 for k in range(16)], dtype=torch.int64)
    return Dataset("mine", Split(images, labels), Split(images, labels), classes, mean, std, "a Dataset from Python")


def _train_api(tmp: Path, data, *overrides: str, run_dir=None):
    import cifarlab

    def call():
        cifarlab.train("smoke", [f"output.dir={tmp / 'runs'}", "train.epochs=1", "schedule.peak_epoch=0.5",
                                 "train.batch_size=8", *FAST, *overrides], data=data, run_dir=run_dir)

    return call


def _constant_channel() -> np.ndarray:
    images = _random_images(16)
    images[:, 1] = 77
    return images


def _ckpt(run: Path) -> str:
    return str(run / "checkpoints" / "best.pt")


def _nan_weights(payload):
    first = next(iter(payload["model"]))
    payload["model"][first] = torch.full_like(payload["model"][first], math.nan)
    if payload.get("ema"):
        payload["ema"] = None


def _config(section, key, value):
    def change(payload):
        payload["config"][section][key] = value

    return change


def _dangling(folder: Path) -> Path:
    (folder / "train" / "ant" / "zzz.png").symlink_to(folder / "nowhere.png")
    return folder


def _bomb(folder: Path) -> Path:
    """A valid PNG header that claims 10000x10000 pixels, among the train images."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 10000, 10000, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + chunk(b"IEND", b""))
    (folder / "train" / "bee" / "huge.png").write_bytes(data)
    return folder


def _train_cli(tmp: Path, images: Path, *extra: str) -> list[str]:
    return ["train", "smoke", f"data.dir={images}", f"output.dir={tmp / 'runs'}", *FOLDER_RUN, *extra]


F = "folder"
# (id, setup(tmp, fixtures, monkeypatch) -> CLI argv or API call, words the message must contain)
CASES = [
    # ---- 2. data identity: a checkpoint knows its class names and a fingerprint of each split
    ("eval-class-folder-renamed",
     lambda t, f, m: ["eval", _ckpt(f[F]["run"]), "--data-dir", str(_renamed(f[F]["images"], t / "d"))],
     ["not the data this checkpoint was trained on", "class 1 is 'bee' in the checkpoint but 'wasp'"]),
    ("report-class-folder-renamed",
     lambda t, f, m: ["report", str(shutil.copytree(f[F]["run"], t / "r")), "--data-dir",
                      str(_renamed(f[F]["images"], t / "d"))],
     ["not the data this checkpoint was trained on", "same class names in the same order"]),
    ("eval-classes-reordered",
     lambda t, f, m: ["eval", _ckpt(f[F]["run"]), "--data-dir", str(_renamed(f[F]["images"], t / "d", "bee", "aaa"))],
     ["class 0 is 'ant' in the checkpoint but 'aaa'"]),
    ("eval-a-third-class",
     lambda t, f, m: ["eval", _ckpt(f[F]["run"]), "--data-dir",
                      str(_png_folder(t / "d", ("ant", "bee", "cat")))],
     ["the checkpoint has 2 classes, the data 3"]),
    ("resume-epochs-class-folder-renamed",
     lambda t, f, m: ["resume", str(tampered_copy(f[F]["run"], t / "r", _config(
         "data", "dir", str(_renamed(f[F]["images"], t / "d"))))), "--epochs", "2"],
     ["not the data this checkpoint was trained on", "resumed on data with the same class names"]),
    ("resume-epochs-a-train-image-changed",
     lambda t, f, m: ["resume", str(tampered_copy(f[F]["run"], t / "r", _config(
         "data", "dir", str(_one_image_changed(f[F]["images"], t / "d"))))), "--epochs", "2"],
     ["the train images of folder", "differ from those this checkpoint was trained with", "model.init_from"]),
    ("resume-epochs-a-test-image-changed",
     lambda t, f, m: ["resume", str(tampered_copy(f[F]["run"], t / "r", _config(
         "data", "dir", str(_one_image_changed(f[F]["images"], t / "d", "test"))))), "--epochs", "2"],
     ["the test images of folder", "can only be resumed on its own data"]),
    ("checkpoint-fingerprint-not-a-digest",
     lambda t, f, m: ["eval", _ckpt(tampered_copy(f[F]["run"], t / "r", lambda p: p.update(
         data_fingerprint={"train": "x", "val": None, "test": None})))],
     ["data_fingerprint must be null or {train, val, test"]),
    # ---- 2. every entry path: the same rules for folders, arrays, Dataset objects
    ("arrays-label-a-billion",
     lambda t, f, m: _train_api(t, _arrays(_random_images(4), [0, 1, 0, 10**9])),
     ["K at most 100,000", "1,000,000,000"]),
    ("dataset-one-class-name",
     lambda t, f, m: _train_api(t, _dataset(classes=("ant",), labels=[0] * 16)),
     ["at least 2 classes", "['ant']"]),
    ("dataset-class-names-not-strings",
     lambda t, f, m: _train_api(t, _dataset(classes=(0, 1))),
     ["class names must be non-empty strings", "[0, 1]"]),
    ("dataset-class-names-twice",
     lambda t, f, m: _train_api(t, _dataset(classes=("ant", "ant"))),
     ["class names must be distinct", "'ant' twice"]),
    ("dataset-label-out-of-range",
     lambda t, f, m: _train_api(t, _dataset(labels=[0, 1] * 7 + [5, 0])),
     ["train labels must be in 0..1 (2 classes)", "0..5"]),
    ("dataset-mean-nan",
     lambda t, f, m: _train_api(t, _dataset(mean=(math.nan, 0.5, 0.5))),
     ["mean/std are not finite", "set data.mean and data.std"]),
    ("arrays-one-label-used",
     lambda t, f, m: _train_api(t, _arrays(_random_images(16), [0] * 16)),
     ["only class '0' has training images", "at least 2 classes"]),
    ("arrays-4x4-images",
     lambda t, f, m: _train_api(t, _arrays(_random_images(16, size=4), [0, 1] * 8)),
     ["images are 4x4, too small for model 'convnet'", "use larger images"]),
    ("arrays-3x3-images",
     lambda t, f, m: _train_api(t, _arrays(_random_images(16, size=3), [0, 1] * 8)),
     ["images are 3x3, too small for model 'convnet'"]),
    ("folder-3x3-images",
     lambda t, f, m: _train_cli(t, _png_folder(t / "d", size=3)),
     ["folder images are 3x3, too small for model 'convnet'", "image_size"]),
    ("train-into-an-existing-run",
     lambda t, f, m: _train_api(t, None, run_dir=shutil.copytree(f[F]["run"], t / "r")),
     ["is not empty", "cifarlab.resume("]),
    ("train-into-a-file",
     lambda t, f, m: _train_api(t, None, run_dir=_touch(t / "file")),
     ["run_dir", "is a file"]),
    # ---- 3. degenerate but legal data
    ("arrays-constant-channel",
     lambda t, f, m: _train_api(t, _arrays(_constant_channel(), [0, 1] * 8)),
     ["channel 1 of the training images is constant (std 0)", "data.std=["]),
    ("folder-all-images-one-grey",
     lambda t, f, m: _train_cli(t, _png_folder(t / "d", constant=True)),
     ["channel 0 of the training images is constant (std 0)", "data.std=[1.0"]),
    ("val-split-would-take-the-last-image-of-a-class",
     lambda t, f, m: _train_api(t, _arrays(_random_images(10), [0] * 9 + [1], ["ant", "bee"]), "data.val_split=9"),
     ["data.val_split=9 takes 9 of 10 training images", "every class keeps at least one", "at most 8"]),
    ("folder-one-class",
     lambda t, f, m: _train_cli(t, _png_folder(t / "d", ("ant",))),
     ["a classifier needs at least 2 classes", "['ant']"]),
    ("folder-dangling-symlink",
     lambda t, f, m: _train_cli(t, _dangling(_png_folder(t / "d"))),
     ["cannot read image", "zzz.png", "rather than skip it"]),
    ("folder-10000x10000-header",
     lambda t, f, m: _train_cli(t, _bomb(_png_folder(t / "d"))),
     ["huge.png", "10000x10000 pixels", "scale it down"]),
    # ---- 5. export and checkpoint paths
    ("export-nan-weights",
     lambda t, f, m: ["export", _ckpt(tampered_copy(f[F]["run"], t / "r", _nan_weights)), "--format", "safetensors",
                      "--out", str(t / "net.safetensors")],
     ["non-finite (NaN or inf) values", "cannot be exported"]),
    ("export-onnx-differs-from-pytorch",
     lambda t, f, m: _onnx_differs(m, ["export", _ckpt(f[F]["run"]), "--format", "onnx", "--out", str(t / "n.onnx")]),
     ["the ONNX export of", "differs from PyTorch by 0.5", "nothing was written"]),
    ("eval-checkpoint-dot", lambda t, f, m: ["eval", "."], ["checkpoint . is a directory", ".pt file"]),
    ("eval-checkpoint-root", lambda t, f, m: ["eval", "/"], ["checkpoint / is a directory"]),
    ("predict-checkpoint-dot",
     lambda t, f, m: ["predict", ".", str(f[F]["images"] / "test" / "ant" / "000.png")],
     ["checkpoint . is a directory"]),
    ("export-checkpoint-root",
     lambda t, f, m: ["export", "/", "--format", "safetensors"], ["checkpoint / is a directory"]),
    ("export-checkpoint-dot-out-given",
     lambda t, f, m: ["export", ".", "--format", "safetensors", "--out", str(t / "n.safetensors")],
     ["checkpoint . is a directory"]),
    ("init-from-dot",
     lambda t, f, m: ["train", "smoke", f"output.dir={t / 'runs'}", "model.init_from=.", *FAST],
     ["model.init_from", "checkpoint . is a directory"]),
    # ---- 6. environment and model options
    ("max-checkpoint-bytes-superscript",
     lambda t, f, m: _env(m, "CIFARLAB_MAX_CHECKPOINT_BYTES", "²", ["eval", _ckpt(f[F]["run"])]),
     ["CIFARLAB_MAX_CHECKPOINT_BYTES must be a positive whole number", "'²'"]),
    ("world-size-not-a-number",
     lambda t, f, m: _env(m, "WORLD_SIZE", "abc", ["train", "smoke", f"output.dir={t / 'runs'}", *FAST]),
     ["WORLD_SIZE must be a whole number", "'abc'", "unset it"]),
    ("world-size-2-without-a-launcher",
     lambda t, f, m: _env(m, "WORLD_SIZE", "2", ["train", "smoke", f"output.dir={t / 'runs'}", *FAST]),
     ["WORLD_SIZE=2 is set but MASTER_ADDR and MASTER_PORT are not", "torchrun"]),
    ("stray-rank-1-still-prints-its-error",
     lambda t, f, m: _env(m, "RANK", "1", ["resume", str(shutil.copytree(f[F]["run"], t / "r"))]),
     ["already finished"]),
    ("mlflow-uri-unknown-scheme",
     lambda t, f, m: _needs_mlflow(["train", "smoke", f"output.dir={t / 'runs'}", "output.mlflow=true",
                                    "output.mlflow_uri=htp://tracking", *FAST]),
     ["output.mlflow_uri='htp://tracking' cannot be used", "http://host:port"]),
    ("mlflow-server-unreachable",
     lambda t, f, m: _needs_mlflow(["train", "smoke", f"output.dir={t / 'runs'}", "output.mlflow=true",
                                    f"output.mlflow_uri=http://127.0.0.1:{_closed_port()}", *FAST]),
     ["output.mlflow_uri='http://127.0.0.1:", "cannot be"]),
    ("resume-epochs-corrupt-mlflow-json",
     lambda t, f, m: _needs_mlflow(["resume", str(_with_file(tampered_copy(f[F]["run"], t / "r", _config(
         "output", "mlflow", True)), "mlflow.json", "{not json")), "--epochs", "2"]),
     ["mlflow.json is not readable", "delete it to log the rest into a new MLflow run"]),
    ("resume-epochs-tensorboard-folder-is-a-file",
     lambda t, f, m: ["resume", str(_with_file(tampered_copy(f[F]["run"], t / "r", _config(
         "output", "tensorboard", True)), "tb", "not a folder")), "--epochs", "2"],
     ["output.tensorboard", "tb is a file, not a folder"]),
    ("model-width-a-float",
     lambda t, f, m: ["train", "smoke", f"output.dir={t / 'runs'}", "model.options={width: 8.5}", *FAST],
     ["model 'convnet' cannot be built: width=8.5 must be a whole number", "model.options.width"]),
    ("model-width-a-string",
     lambda t, f, m: ["train", "smoke", f"output.dir={t / 'runs'}", "model.options={width: '8'}", *FAST],
     ["model 'convnet' cannot be built: width='8' must be a whole number", "not a str"]),
]


def _onnx_differs(monkeypatch, argv: list[str]) -> list[str]:
    """As if onnxruntime computed other logits than PyTorch (an exporter bug): the check must refuse."""
    pytest.importorskip("onnx")
    monkeypatch.setattr("cifarlab.export.onnx_max_abs_diff", lambda *args: 0.5)
    return argv


def _needs_mlflow(argv: list[str]) -> list[str]:
    pytest.importorskip("mlflow")
    return argv


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _with_file(run: Path, name: str, text: str) -> Path:
    (run / name).write_text(text)
    return run


def _touch(path: Path) -> Path:
    path.write_text("not a folder\n")
    return path


def _env(monkeypatch, name: str, value: str, argv: list[str]) -> list[str]:
    monkeypatch.setenv(name, value)
    return argv


def test_the_table_covers_every_class():
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 35


# Cases that would allocate until memory runs out were their fix lost: a real process under a memory limit.
IN_A_PROCESS = {"arrays-label-a-billion"}


# A case in its own process pays torch's import (seconds): marked slow, with any other case over ~2 s.
SLOW = IN_A_PROCESS | {"export-onnx-differs-from-pytorch"}


@pytest.mark.parametrize("case", [pytest.param(case, id=case[0], marks=[pytest.mark.slow] * (case[0] in SLOW))
                                  for case in CASES])
def test_bad_data_gives_one_line_exit_2_and_changes_nothing(case, tmp_path, folder_run, monkeypatch, capsys):
    name, setup, words = case
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIFARLAB_DATA", str(folder_run["cache"]))
    target = setup(tmp_path, {F: folder_run}, monkeypatch)
    watched = {"run": folder_run["run"], "images": folder_run["images"], "tmp": tmp_path}
    if not callable(target):
        assert_refused(target, words, watched, capsys, tmp_path)
    elif name in IN_A_PROCESS:
        _assert_api_refused_in_a_process(name, words, tmp_path)
    else:
        before = {key: tree_hashes(path) for key, path in watched.items()}
        with pytest.raises(UserError) as caught:
            target()
        message = str(caught.value)
        assert "\n" not in message, message
        for word in words:
            assert word in message, (word, message)
        assert {key: tree_hashes(path) for key, path in watched.items()} == before
    assert not (tmp_path / "runs").exists()  # refused before any run directory (or its recipe folder) was made


def _assert_api_refused_in_a_process(name: str, words: list[str], tmp: Path) -> None:
    import resource

    from _runs import MEMORY_LIMIT

    code = ("import sys, numpy as np, cifarlab\nfrom cifarlab.errors import UserError\n"
            "x = np.zeros((4, 3, 12, 12), np.uint8)\n"
            "try:\n    cifarlab.train('smoke', [f'output.dir={sys.argv[1]}'], data=(x, np.array([0, 1, 0, 10**9]), x, "
            "np.array([0, 1, 0, 1])))\nexcept UserError as e:\n    print(e, file=sys.stderr); sys.exit(2)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp / "runs")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(SRC)},
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT)))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.slow  # its own process (torch's import): the old code aborted the whole process here
def test_torchscript_export_on_a_full_disk_is_one_line_and_leaves_no_temporary(folder_run, tmp_path):
    """A disk that fills while the TorchScript file is written (here a file-size limit: EFBIG, as ENOSPC
    would be): torch.jit.save's own writer threw a C++ exception through Python, the process aborted (a
    terminate, exit -6) and its temporary file stayed. Now: one line, exit 2, nothing left in the folder."""
    import resource

    out = tmp_path / "exports"
    out.mkdir()
    before = tree_hashes(folder_run["run"])
    done = subprocess.run([sys.executable, "-m", "cifarlab", "export", _ckpt(folder_run["run"]), "--format",
                           "torchscript", "--out", str(out / "net.torchscript.pt")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(SRC)}, cwd=tmp_path,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (16384, resource.RLIM_INFINITY)))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0] == f"cifarlab export: error: cannot write {out / 'net.torchscript.pt'}: File too large"
    assert list(out.iterdir()) == [] and tree_hashes(folder_run["run"]) == before
