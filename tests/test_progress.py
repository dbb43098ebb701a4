"""Long phases say how far they are when the output is not a terminal (a batch job, CI, a pipe)."""
import io
import re

from cifarlab.progress import PhaseProgress


def test_range_test_prints_progress_lines_when_not_a_terminal(tmp_path, capsys, monkeypatch):
    from cifarlab.cli import main

    monkeypatch.setattr(PhaseProgress, "MIN_SECONDS", 0.0)  # a few seconds here; minutes on a real recipe
    assert main(["lr-find", "smoke", "lr_find.num_iter=20", "train.threads=1", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^range test: 20 steps, lr 1e-07 to 10", err, flags=re.M), err
    done = [int(n) for n in re.findall(r"^  range test: (\d+)/20 steps \(lr [\d.e+-]+, loss [\d.]+\)", err, flags=re.M)]
    assert len(done) >= 5 and done == sorted(done), err


def test_lines_come_every_tenth_and_never_stay_silent_long(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("cifarlab.progress.time.perf_counter", lambda: clock[0])
    out = io.StringIO()
    progress = PhaseProgress("decoding", 1000, "images", "auto", stream=out)
    for _ in range(1000):
        clock[0] += 0.1  # 100 s in all: a line per tenth, each at least MIN_SECONDS apart
        progress.update()
    lines = out.getvalue().splitlines()
    assert lines[0] == "decoding: 1,000 images" and len(lines) == 1 + 10
    assert lines[1].startswith("  decoding: 100/1,000 images, 10 s so far, about 90 s left")
    slow = io.StringIO()
    progress = PhaseProgress("range test", 100, "steps", "auto", stream=slow)
    clock[0] += 31.0  # one step slower than MAX_SILENT_SECONDS: a line anyway
    progress.update()
    assert slow.getvalue().splitlines()[1].startswith("  range test: 1/100 steps")


def test_no_lines_with_progress_none():
    out = io.StringIO()
    with PhaseProgress("range test", 10, "steps", "none", stream=out) as progress:
        for _ in range(10):
            progress.update()
    assert out.getvalue() == ""


def _evaluate_tiny(progress: str):
    import torch
    from torch import nn

    from cifarlab.data.loader import DeviceLoader
    from cifarlab.models.inference import evaluate
    from cifarlab.runtime import Precision

    images = torch.randint(0, 256, (100, 1, 8, 8), dtype=torch.uint8)
    loader = DeviceLoader(images, torch.arange(100) % 10, batch_size=10, device=torch.device("cpu"),
                          mean=(0.5,), std=(0.25,), train=False)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    return evaluate(model, loader, Precision("fp32", "cpu"), progress=progress, what="test evaluation")


def test_a_long_evaluation_says_how_far_it_is_and_a_short_one_says_nothing(capsys, monkeypatch):
    _evaluate_tiny("auto")
    assert capsys.readouterr().err == ""  # done within MIN_SECONDS: not a line
    monkeypatch.setattr(PhaseProgress, "MIN_SECONDS", 0.0)  # as if each batch took seconds
    loss, accuracy = _evaluate_tiny("auto")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("  test evaluation: 1/10 batches") and lines[-1].startswith("  test evaluation: 10/10")
    assert 0 <= accuracy <= 1
