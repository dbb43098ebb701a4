"""kill -9 at the worst moment of every writer (issue 17, class 5): each file is the old one or the whole
new one, never a partial one, and the temporaries of the killed writer are gone after the next run.

Every case runs the real CLI in a process that SIGKILLs itself when its `n`-th rename onto the target
file is about to happen (the temporary is complete, the target not yet replaced: the moment a writer
without `cifarlab.atomic` would leave a 0-byte or half file), or, for metrics.csv's appends, half-way
through a row. Then the same command runs again. A killed writer's temporary is only removed once it is
a minute old (`atomic.STALE_SECONDS`: a live writer on another host must not lose its file), so the test
ages the leftovers by a minute before the next run instead of sleeping.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _runs import FAST, SRC, finished_and_open_runs, tree_hashes
from cifarlab import atomic
from cifarlab.cli import main
from cifarlab.run.checkpoint import load_checkpoint
from cifarlab.run.metrics import read_metrics

pytestmark = pytest.mark.slow

# Replaces os.replace (every atomic write ends in one) and os.write (metrics.csv appends) with versions
# that SIGKILL the process at the chosen moment, then runs the CLI.
KILLER = """
import os, signal, sys
from fnmatch import fnmatch
pattern, nth, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seen = [0]
real_replace, real_write = os.replace, os.write

def due(name):
    if not fnmatch(name, pattern):
        return False
    seen[0] += 1
    return seen[0] == nth

def replace(src, dst, *args, **kwargs):
    if how == "rename" and due(os.path.basename(dst)):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)

def write(fd, data):
    if how == "append" and due(os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))):
        real_write(fd, bytes(data)[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real_write(fd, data)

os.replace, os.write = replace, write
from cifarlab.cli import main
sys.exit(main(sys.argv[4:]))
"""


def _killed(pattern: str, nth: int, argv: list[str], env: dict, how: str = "rename") -> None:
    done = subprocess.run([sys.executable, "-c", KILLER, pattern, str(nth), how, *argv], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(SRC), **env})
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


def _temps(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*") if p.name.endswith(atomic.TEMP_SUFFIX)
            or ".tmp-" in p.name]


def _age(paths: list[Path]) -> None:
    """As if the next run came a minute later (see module doc)."""
    old = time.time() - atomic.STALE_SECONDS - 60
    for path in paths:
        os.utime(path, (old, old), follow_symlinks=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_runs):
    root = tmp_path_factory.mktemp("runs")
    made = finished_and_open_runs(root, shared_runs)
    reported = root / "reported"
    shutil.copytree(made["done"], reported)
    # In a fresh interpreter, as the killed report runs: plots are compared byte for byte, and this
    # process's matplotlib state (left by earlier tests) could render the same figure differently.
    done = subprocess.run([sys.executable, "-m", "cifarlab", "report", str(reported)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 0, done.stderr
    return {**made, "reported": reported}


def _files(folder: Path) -> dict[str, str]:
    """tree_hashes without the temporaries."""
    return {name: digest for name, digest in tree_hashes(folder).items() if not Path(name).name.startswith(".")}


# The report's own file, a plot, a table: the report writes them all through cifarlab.atomic.
@pytest.mark.parametrize("target", ["report.md", "curves.png", "per_class.csv"])
def test_report_killed_while_replacing_a_file_leaves_the_old_report(runs, tmp_path, target, capsys):
    run = shutil.copytree(runs["reported"], tmp_path / "run")
    before = tree_hashes(run)
    _killed(target, 1, ["report", str(run)], {})
    assert _files(run) == before  # files the report had not replaced yet are the old ones, and so is the target
    leftovers = _temps(run)
    assert leftovers and all(p.name.startswith(f".{target}.") for p in leftovers)
    _age(leftovers)
    assert main(["report", str(run)]) == 0
    capsys.readouterr()
    assert not _temps(run)
    assert set(tree_hashes(run)) == set(before) and all(p.stat().st_size > 0 for p in run.rglob("*") if p.is_file())


def test_checkpoint_killed_while_replacing_last_pt_leaves_a_loadable_one(runs, tmp_path, capsys):
    run = shutil.copytree(runs["open"], tmp_path / "run")
    before = tree_hashes(run)
    _killed("last.pt", 1, ["resume", str(run)], {})
    checkpoints = run / "checkpoints"
    assert _files(run)["checkpoints/last.pt"] == before["checkpoints/last.pt"]  # the old one, whole
    for path in checkpoints.glob("*.pt"):
        load_checkpoint(path)  # every checkpoint there passes its sha256 check
    _age(_temps(run))
    assert main(["resume", str(run)]) == 0
    capsys.readouterr()
    assert not _temps(run) and load_checkpoint(checkpoints / "last.pt")["status"] == "completed"


def test_metrics_csv_killed_half_way_through_a_row_keeps_whole_rows(runs, tmp_path, capsys):
    run = shutil.copytree(runs["open"], tmp_path / "run")
    _killed("metrics.csv", 1, ["resume", str(run)], {}, how="append")
    text = (run / "metrics.csv").read_text()
    assert not text.endswith("\n")  # the torn half row is there...
    whole = text.count("\n") - 1  # lines after the header that were written in full
    assert len(read_metrics(run)) == whole  # ...and readers skip it
    assert main(["resume", str(run)]) == 0
    capsys.readouterr()
    text = (run / "metrics.csv").read_text()
    assert text.endswith("\n") and len({len(line.split(",")) for line in text.splitlines()}) == 1
    assert [row.epoch for row in read_metrics(run) if row.kind == "epoch"] == [1, 2]


@pytest.mark.parametrize("export_format, suffix", [("safetensors", "safetensors"), ("torchscript", "pt"),
                                                   ("onnx", "onnx")])
def test_export_killed_before_its_rename_leaves_no_file_and_the_next_export_sweeps(
        runs, tmp_path, export_format, suffix, capsys):
    if export_format == "onnx":
        pytest.importorskip("onnx")
    out = tmp_path / "out" / f"net.{suffix}"
    out.parent.mkdir()
    argv = ["export", str(runs["done"] / "checkpoints" / "best.pt"), "--format", export_format, "--out", str(out)]
    _killed(out.name, 1, argv, {})
    assert not out.exists() and not out.with_name(out.name + ".json").exists()  # old (nothing): no partial file
    leftovers = _temps(out.parent)
    assert leftovers
    _age(leftovers)
    assert main(argv) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name, out.name + ".json"]


def _png_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", 40), ("test", 12)):
        for name in ("ant", "bee"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return root


def test_folder_cache_killed_before_its_rename_is_rebuilt_and_swept(tmp_path, capsys, monkeypatch):
    images, cache = _png_folder(tmp_path / "images"), tmp_path / "cache"
    argv = ["train", "smoke", "data.dataset=folder", f"data.dir={images}", "data.options={}", "train.epochs=1",
            "schedule.peak_epoch=0.5", "train.batch_size=16", f"output.dir={tmp_path / 'runs'}", *FAST]
    _killed("*.pt", 1, argv, {"CIFARLAB_DATA": str(cache)})
    assert not [p for p in cache.rglob("*.pt")]  # no partial cache under the real name
    leftovers = _temps(cache)
    assert leftovers
    _age(leftovers)
    monkeypatch.setenv("CIFARLAB_DATA", str(cache))
    assert main(argv) == 0
    capsys.readouterr()
    assert not _temps(cache) and len(list(cache.rglob("*.pt"))) == 1
    assert fnmatch(next(cache.rglob("*.pt")).name, "*-*.pt")
