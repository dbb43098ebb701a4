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
