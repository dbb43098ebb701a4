"""Output that says what it is (issue 18 item 6): file names, plot labels, report fields, CSV cells,
messages and file permissions that tell the user the truth about what they hold."""
import contextlib
import csv
import io
import json
import os
import re
import stat

import pytest
import torch

from _folders import needs_fashion, write_fashion_folder
from _runs import flip_run
from cifarlab import atomic
from cifarlab.cli import main
from cifarlab.progress import PhaseProgress

FAST = ["train.threads=1", "output.tensorboard=false", "output.progress=none"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_runs):
    """A 1-epoch smoke run with flip TTA; the data line it printed."""
    return flip_run(tmp_path_factory.mktemp("says"), shared_runs)


@pytest.fixture(scope="module")
def reported(run):
    """The run's report (`cifarlab report`): tens of seconds on a busy 2-core machine; and what it printed."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["report", str(run[0])]) == 0
    return run[0], err.getvalue()


def test_gradcam_gets_a_clean_file_name_printed_relative_to_the_working_folder(run, capsys, monkeypatch):
    run_dir, _ = run
    monkeypatch.chdir(run_dir.parent)
    for method, name in (("gradcam", "gradcam-best.png"), ("gradcam++", "gradcampp-best.png")):
        assert main(["gradcam", str(run_dir / "checkpoints" / "best.pt"), "--images", "0,1", "--method", method]) == 0
        written = capsys.readouterr().out.strip()
        assert written == os.path.join(run_dir.name, "plots", name) and os.path.isfile(written)


def test_gradcam_on_own_images_labels_the_second_map_runner_up(run, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from cifarlab.analysis import image_grids
    from cifarlab.data.sources import load_dataset

    run_dir, _ = run
    test = load_dataset("synthetic", num_train=512, num_test=256, image_size=16).test
    files = []
    for i in range(2):
        files.append(tmp_path / f"own{i}.png")
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).save(files[-1])
    calls = []
    real = image_grids.plot_gradcam
    monkeypatch.setattr(image_grids, "plot_gradcam", lambda *a, **kw: calls.append((a, kw)) or real(*a, **kw))
    assert main(["gradcam", str(run_dir / "checkpoints" / "best.pt"), "--images", ",".join(map(str, files)),
                 "--out", str(tmp_path / "own.png")]) == 0
    (args, kwargs), = calls
    assert kwargs["other"] == "runner-up class"
    assert all(re.fullmatch(r"own\d\.png: \w+ \d+%\nrunner-up \w+ \d+%", title) for title in args[3]), args[3]
    assert main(["gradcam", str(run_dir / "checkpoints" / "best.pt"), "--images", "0",
                 "--out", str(tmp_path / "test.png")]) == 0
    assert calls[-1][1]["other"] == "true class"  # test images do have a true class


@pytest.mark.slow
def test_report_says_where_the_peak_lr_came_from(reported):
    run_dir, _ = reported
    report = (run_dir / "report.md").read_text()
    assert "found max LR (range test)" not in report
    assert re.search(r"\| peak learning rate \| 5\.00E-02, as configured \(optim\.lr\) \|", report), report[:2000]
    from cifarlab.analysis.run_sections import summary_cell
    from cifarlab.run.summary import Summary

    found = Summary(lr_peak=0.0123, lr_peak_source="range test (lr_find.suggestion=minimum)")
    assert summary_cell("lr_peak", found) == "1.23E-02, found by the range test (lr_find.suggestion=minimum)"


@pytest.mark.slow
def test_per_class_csv_holds_numbers_and_the_markdown_percentages(reported):
    run_dir, _ = reported
    rows = list(csv.DictReader(open(run_dir / "tables" / "per_class.csv")))
    assert len(rows) == 10
    for row in rows:
        accuracy = float(row["accuracy"])  # a number, not "88.70%"
        assert 0.0 <= accuracy <= 1.0 and accuracy == pytest.approx(int(row["correct"]) / int(row["total"]), abs=1e-6)
    assert re.search(r"\| \d+\.\d\d% \|", (run_dir / "tables" / "per_class.md").read_text())


@pytest.mark.slow
def test_report_prints_progress_when_not_a_terminal(reported):
    _, err = reported
    assert re.search(r"^report: 14 steps, 256 test images$", err, flags=re.M), err
    assert re.search(r"^  report: 14/14 steps \(augmentation\), \d+ s so far$", err, flags=re.M), err


def test_data_line_reads_plainly(run):
    _, err = run
    line = next(line for line in err.splitlines() if line.startswith("data: "))
    assert re.fullmatch(r"data: synthetic, 512 train / 256 test images, from .+", line), line
    assert _nesting(line) <= 1, line


def _nesting(text: str) -> int:
    depth = deepest = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        deepest = max(deepest, depth)
    return deepest


@needs_fashion
def test_a_cached_image_folder_says_its_origin_without_nesting(tmp_path, monkeypatch, capsys):
    from cifarlab.data.sources import load_dataset

    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "cache"))
    write_fashion_folder(tmp_path / "fm", train_per_class=2, test_per_class=1)
    capsys.readouterr()
    monkeypatch.setattr(PhaseProgress, "MIN_SECONDS", 0.0)  # as if decoding took minutes, as a big folder does
    assert _nesting(load_dataset("folder", tmp_path / "fm").origin) <= 1
    err = capsys.readouterr().err
    assert re.search(rf"^  decoding {re.escape(str((tmp_path / 'fm').resolve()))}: 30/30 images", err, re.M), err
    cached = load_dataset("folder", tmp_path / "fm").origin
    assert cached.startswith("cache ") and ", decoded from " in cached and _nesting(cached) <= 1, cached


def test_init_from_says_what_it_loaded(run, tmp_path, capsys):
    run_dir, _ = run
    checkpoint = run_dir / "checkpoints" / "best.pt"
    assert main(["train", "smoke", f"output.dir={tmp_path}", "train.epochs=1", "schedule.peak_epoch=0.5",
                 f"model.init_from={checkpoint}", *FAST, "output.progress=lines"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("model.init_from")]
    assert len(lines) == 1, lines
    count = len(torch.load(checkpoint, weights_only=False)["model"])
    assert re.fullmatch(rf"model.init_from: loaded {count} of {count} tensors \([\d,]+ values\) from "
                        rf"{re.escape(str(checkpoint))}, its weights of epoch 1; classifier head kept", lines[0])


def test_init_from_with_a_fresh_head_says_so(run, tmp_path, capsys):
    run_dir, _ = run
    checkpoint = run_dir / "checkpoints" / "best.pt"
    assert main(["train", "smoke", f"output.dir={tmp_path}", "train.epochs=1", "schedule.peak_epoch=0.5",
                 f"model.init_from={checkpoint}", "model.init_head=false", *FAST, "output.progress=lines"]) == 0
    line, = [line for line in capsys.readouterr().err.splitlines() if line.startswith("model.init_from")]
    loaded, total = map(int, re.search(r"loaded (\d+) of (\d+) tensors", line).groups())
    assert loaded == total - 2 and re.search(r"classifier head '[\w.]+' started fresh for 10 classes$", line)


def test_safetensors_export_has_the_permissions_of_every_other_export(run, tmp_path):
    run_dir, _ = run
    for fmt, name in (("safetensors", "net.safetensors"), ("torchscript", "net.pt")):
        assert main(["export", str(run_dir / "checkpoints" / "best.pt"), "--format", fmt,
                     "--out", str(tmp_path / name)]) == 0
    expected = 0o666 & ~atomic._UMASK
    for name in ("net.safetensors", "net.safetensors.json", "net.pt", "net.pt.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_an_export_without_the_runs_tta_says_so(run, tmp_path, capsys):
    run_dir, _ = run
    assert main(["export", str(run_dir / "checkpoints" / "best.pt"), "--format", "torchscript",
                 "--out", str(tmp_path / "bare.pt")]) == 0
    note = json.loads((tmp_path / "bare.pt.json").read_text())["note"]
    assert "flip TTA" in note and "--tta" in note
    assert f"note: {note}" in capsys.readouterr().err


def _test_inputs(model, count=32):
    from cifarlab.data.normalize import normalize, to_float
    from cifarlab.data.sources import load_dataset

    images = load_dataset("synthetic", num_train=512, num_test=256, image_size=16).test.images[:count]
    return normalize(to_float(images), model.mean, model.std, channels_last=False)


@pytest.mark.slow  # the ONNX exporter takes about a minute on a busy 2-core machine
def test_export_with_tta_scores_as_the_run_did(run, tmp_path, capsys):
    """The graph averages the flipped views as the run's evaluation does (checked with onnxruntime)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import cifarlab
    from cifarlab.models.inference import log_probs

    run_dir, _ = run
    best = run_dir / "checkpoints" / "best.pt"
    assert main(["export", str(best), "--format", "onnx", "--tta", "--out", str(tmp_path / "tta.onnx")]) == 0
    assert "note:" not in capsys.readouterr().err
    meta = json.loads((tmp_path / "tta.onnx.json").read_text())
    assert meta["tta_in_graph"] == "flip" and meta["note"] is None and "TTA" in meta["output"]
    model = cifarlab.load_model(best, device="cpu", precision="fp32")
    inputs = _test_inputs(model)
    session = onnxruntime.InferenceSession(str(tmp_path / "tta.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": inputs.numpy()})[0])
    with torch.no_grad():
        expected, bare = log_probs(model.module, inputs, tta="flip"), log_probs(model.module, inputs)
    assert (got - expected).abs().max() < 1e-4
    assert (got - bare).abs().max() > 1e-3  # the views really are averaged: not the bare network
    assert torch.allclose(got.softmax(1).sum(1), torch.ones(len(got)))  # still logits


@pytest.mark.slow
def test_export_with_tta_in_torchscript_and_not_in_safetensors(run, tmp_path):
    import cifarlab
    from cifarlab.errors import UserError
    from cifarlab.export import export
    from cifarlab.models.inference import log_probs

    best = run[0] / "checkpoints" / "best.pt"
    out = export(best, "torchscript", tmp_path / "tta.pt", tta="flip_translate")
    model = cifarlab.load_model(best, device="cpu", precision="fp32")
    inputs = _test_inputs(model, 8)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(out))(inputs), log_probs(model.module, inputs, tta="flip_translate"),
                              atol=1e-5)
    with pytest.raises(UserError, match="--tta needs --format onnx or torchscript"):
        export(best, "safetensors", tmp_path / "w.safetensors", tta=True)
    assert not (tmp_path / "w.safetensors").exists()
