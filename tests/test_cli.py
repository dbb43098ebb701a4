"""The CLI end to end on the synthetic `smoke` recipe: every run-directory file and every command."""
import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from _runs import SRC
from cifarlab.cli import main
from cifarlab.data.sources import load_dataset
from cifarlab.run.summary import Summary


def _run_dir(out_root, recipe="smoke"):
    dirs = sorted(p for p in (out_root / recipe).iterdir() if p.is_dir())
    assert len(dirs) == 1
    return dirs[0]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", "smoke", f"output.dir={root}", "train.epochs=3", "output.report=true"]) == 0
    return _run_dir(root)


@pytest.mark.slow
def test_train_writes_every_run_directory_file(smoke_run):
    for name in ["config.yaml", "metrics.csv", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt",
                 "report.md", "report.html", "model_summary.txt", "plots/curves.png", "plots/lr.png",
                 "plots/confusion.png", "plots/misclassified.png", "plots/gradcam.png", "plots/augment.png"]:
        assert (smoke_run / name).is_file(), name
    assert list((smoke_run / "tb").glob("events.out.tfevents.*"))
    rows = list(csv.DictReader(open(smoke_run / "metrics.csv")))
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [int(r["epoch"]) for r in epochs] == [1, 2, 3]
    assert any(r["kind"] == "step" for r in rows)
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 3
    assert summary["best_test_acc"] == max(float(r["test_acc"]) for r in epochs) or \
        abs(summary["best_test_acc"] - max(float(r["test_acc"]) for r in epochs)) < 1e-5
    assert summary["train_images_per_second"] > 0


@pytest.mark.slow
def test_report_has_every_section_and_every_linked_file(smoke_run):
    report = (smoke_run / "report.md").read_text()
    for section in ["Summary", "Configuration", "Environment", "Training curves", "Learning rate", "Model summary",
                    "Per-class accuracy", "Confusion", "Misclassified images", "Grad-CAM", "Augmentation preview"]:
        assert f"## {section}" in report, section
    links = re.findall(r"\]\(((?:plots|tables)/[^)]+)\)", report)
    assert len(links) >= 8 and all((smoke_run / link).is_file() for link in links)
    html = (smoke_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len([link for link in links if link.endswith(".png")])


@pytest.mark.slow
def test_eval_reproduces_the_best_checkpoint_accuracy(smoke_run, capsys):
    assert main(["eval", str(smoke_run / "checkpoints" / "best.pt")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert result["test_acc"] == pytest.approx(summary["best_test_acc"], abs=1e-6)
    assert result["images"] == 256


@pytest.mark.slow
def test_lr_find_writes_plot_and_suggestions(smoke_run, tmp_path, capsys):
    assert main(["lr-find", "smoke", "lr_find.num_iter=20", f"output.dir={tmp_path}",
                 "--out", str(tmp_path / "lr")]) == 0
    out = capsys.readouterr().out
    assert "steepest descent" in out and "valley" in out and "OneCycle: max_lr=" in out
    data = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert len(data["lrs"]) <= 20 and data["lrs"][0] < data["lrs"][-1]
    assert (tmp_path / "lr" / "plots" / "lr_find.png").stat().st_size > 1000


def test_summary_reports_parameters_and_mult_adds(capsys):
    assert main(["summary", "custom_resnet", "data.dataset=cifar10", "train.batch_size=512"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 6,573,130" in out and "Total mult-adds (G): 194.18" in out


def test_summary_takes_the_config_keys_of_every_command_and_its_first_spellings(capsys):
    dotted = ["data.dataset=fashion_mnist", "train.batch_size=8", "model.options.width=4", "model.norm=group"]
    assert main(["summary", "convnet", *dotted]) == 0
    out = capsys.readouterr().out
    assert "Total params:" in out and "[8, 4, 28, 28]" in out and "GroupNorm" in out  # batch 8, width 4, 28 px
    assert main(["summary", "convnet", "dataset=fashion_mnist", "batch_size=8", "width=4", "model.norm=group"]) == 0
    assert capsys.readouterr().out == out
    assert main(["summary", "convnet", "optim.lr=0.1"]) == 2
    assert "summary takes data.dataset, train.batch_size" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_gives_top3_for_image_files_of_any_size(smoke_run, tmp_path, capsys):
    test = load_dataset("synthetic", num_train=512, num_test=256, image_size=16).test
    path = tmp_path / "big.png"
    Image.fromarray(test.images[0].permute(1, 2, 0).numpy()).resize((64, 48)).save(path)
    assert main(["predict", str(smoke_run / "checkpoints" / "best.pt"), str(path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(path)) and line.count("%") == 3


@pytest.mark.slow
def test_predict_takes_a_folder_recursively_and_writes_a_csv(smoke_run, tmp_path, capsys):
    test = load_dataset("synthetic", num_train=512, num_test=256, image_size=16).test
    photos = tmp_path / "photos"
    (photos / "day2" / "more").mkdir(parents=True)
    (photos / ".hidden").mkdir()
    names = ["a.png", "day2/b.jpg", "day2/more/c.PNG", ".hidden/d.png"]
    for i, name in enumerate(names):
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).save(photos / name, format="PNG")
    (photos / "notes.txt").write_text("not an image")
    checkpoint = str(smoke_run / "checkpoints" / "best.pt")
    assert main(["predict", checkpoint, str(photos), "--csv", str(tmp_path / "p.csv"), "--top", "2"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    expected = [str(photos / name) for name in names[:3]]  # sorted, hidden folder and the text file left out
    assert [line.split(": ")[0] for line in printed] == expected
    with open(tmp_path / "p.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == expected
    assert list(rows[0]) == ["image", "class_1", "probability_1", "class_2", "probability_2"]
    for row, line in zip(rows, printed):  # the file says what the screen said
        assert line.endswith(f"{row['class_1']} {100 * float(row['probability_1']):.1f}%, "
                             f"{row['class_2']} {100 * float(row['probability_2']):.1f}%")
    before = (tmp_path / "p.csv").read_bytes()
    assert main(["predict", checkpoint, str(photos), "--csv", str(tmp_path / "p.csv")]) == 2  # never overwritten
    assert (tmp_path / "p.csv").read_bytes() == before
    (tmp_path / "empty").mkdir()
    assert main(["predict", checkpoint, str(tmp_path / "empty")]) == 2
    assert "holds no image file" in capsys.readouterr().err


@pytest.mark.slow
def test_gradcam_command_on_chosen_test_images(smoke_run, tmp_path):
    out = tmp_path / "cam.png"
    assert main(["gradcam", str(smoke_run / "checkpoints" / "best.pt"), "--images", "0,1,2", "--out", str(out),
                 "--method", "gradcam++"]) == 0
    assert np.asarray(Image.open(out)).shape[0] > 100


@pytest.mark.slow
def test_compare_two_runs(smoke_run, tmp_path, capsys):
    assert main(["train", "smoke", f"output.dir={tmp_path}", "train.epochs=2", "output.tensorboard=false"]) == 0
    other = _run_dir(tmp_path)
    capsys.readouterr()
    assert main(["compare", str(smoke_run), str(other), "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    assert table.count("| smoke") == 2 or table.count("smoke") >= 2
    assert (tmp_path / "cmp").is_dir() and list((tmp_path / "cmp").glob("*.png"))


def test_listing_commands(capsys):
    assert main(["recipes"]) == 0
    recipes = capsys.readouterr().out
    for name in ["resnet18-steplr", "resnet18-cutout", "custom-resnet-onecycle", "resnet18-layernorm-plateau",
                 "custom-resnet-fp16", "fmnist-quick", "smoke"]:
        assert name in recipes
    assert main(["models"]) == 0
    assert "11,173,962" in capsys.readouterr().out


def test_bad_override_is_one_line_exit_2(tmp_path, capsys):
    assert main(["train", "smoke", "optim.lr=-1", f"output.dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "optim.lr" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing was created for a rejected config


def test_demo_says_why_it_falls_back_to_fashion_mnist(monkeypatch, capsys):
    import cifarlab.data.sources as sources
    import cifarlab.experiment as experiment
    from cifarlab.errors import UserError

    def offline(name, *args, **kwargs):
        raise UserError("could not download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")

    trained = []
    monkeypatch.setattr(sources, "dataset_available", lambda name, data_dir=None: False)
    monkeypatch.setattr(sources, "download_server_answers", lambda name, seconds: True)
    monkeypatch.setattr(sources, "load_dataset", offline)
    monkeypatch.setattr(experiment, "train", lambda recipe, overrides: trained.append(recipe) or
                        type("Run", (), {"run_dir": "runs/x", "summary": Summary(status="completed")})())
    assert main(["demo"]) == 0
    err = capsys.readouterr().err
    assert trained == ["fmnist-quick"] and "CIFAR-10 is not cached and could not be downloaded" in err
    monkeypatch.setattr(sources, "dataset_available", lambda name, data_dir=None: name == "cifar10")
    assert main(["demo"]) == 0 and trained[-1] == "cifar10-quick"
    # Offline (the server does not answer): no download is tried at all.
    monkeypatch.setattr(sources, "dataset_available", lambda name, data_dir=None: False)
    monkeypatch.setattr(sources, "download_server_answers", lambda name, seconds: False)
    assert main(["demo"]) == 0 and trained[-1] == "fmnist-quick"
    assert "its server did not answer within 5 s" in capsys.readouterr().err


def test_demo_checks_its_overrides_before_it_probes_or_announces(monkeypatch, capsys):
    import cifarlab.data.sources as sources

    probed = []
    monkeypatch.setattr(sources, "dataset_available", lambda name, data_dir=None: probed.append(name) or False)
    monkeypatch.setattr(sources, "download_server_answers", lambda name, seconds: probed.append(name) or False)
    assert main(["demo", "optim.lr=-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert probed == [] and len(err) == 1 and "optim.lr" in err[0] and "demo: training" not in err[0]


def test_the_server_probe_answers_for_a_listening_port_and_not_for_a_closed_one():
    import socket

    from cifarlab.data.download import server_answers

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert server_answers(f"http://127.0.0.1:{port}/cifar-10.tar.gz", seconds=5)
    assert not server_answers(f"http://127.0.0.1:{port}/cifar-10.tar.gz", seconds=5)  # closed now
    assert not server_answers("https://host.invalid/cifar-10.tar.gz", seconds=5)  # no such name


OLD_RUN = SRC.parent / "tests" / "fixtures" / "run_138c3be" / "uninterrupted"


@pytest.mark.parametrize("argv, exit_code", [
    (["--version"], 0), (["--help"], 0), (["trian"], 2), (["recipes"], 0), (["show", "smoke"], 0),
    (["show", "fmnist-quick", "--diff"], 0), (["show", "smoke", "optim.lr=-1"], 2),
    (["compare", str(OLD_RUN), "--out", "{tmp}"], 0),
])
def test_commands_that_need_no_tensor_answer_without_importing_torch(argv, exit_code, tmp_path):
    """They answer at once (torch's import alone takes seconds on a small CPU): help, listing and showing
    recipes, comparing runs from their files, and a bad config refused before anything is built."""
    code = ("import sys\nfrom cifarlab.cli import main\ntry:\n    code = main(sys.argv[1:])\n"
            "except SystemExit as stop:\n    code = stop.code\nprint('exit', code, 'torch' in sys.modules)")
    argv = [arg.replace("{tmp}", str(tmp_path / "cmp")) for arg in argv]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.stdout.strip().splitlines()[-1] == f"exit {exit_code} False", done.stdout + done.stderr


def test_resume_more_is_checked_before_anything_runs(tmp_path, capsys):
    """`resume RUN --more N` (N epochs beyond the run's train.epochs; the README's flow runs it for real)."""
    assert main(["resume", str(tmp_path), "--more", "2"]) == 2
    assert "has no checkpoints/last.pt to resume from" in capsys.readouterr().err
    assert main(["resume", str(tmp_path), "--more", "0"]) == 2
    assert "more (--more) must be a whole number of epochs to add, at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["resume", str(tmp_path), "--more", "2", "--epochs", "8"])
    assert stop.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
