"""cifarlab's messages go through `logging` (logger `cifarlab`): a library user can route or quiet them, and a
run with `output.progress: none` is quiet but for its warnings (issue 28 item 7)."""
from __future__ import annotations

import logging

import pytest

import cifarlab

# 400 synthetic images at batch 50 for 2 epochs: 16 optimizer steps, so the run warns that it is short.
TINY = ["data.options={num_train: 400, num_test: 100, image_size: 12}", "model.name=convnet",
        "model.options={width: 4}", "train.epochs=2", "train.batch_size=50", "output.report=false",
        "output.tensorboard=false", "train.threads=1"]


class Kept(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def own_handler():
    """The `cifarlab` logger as a program that routes it would set it up: its own handler, nothing else."""
    log = logging.getLogger("cifarlab")
    saved = log.handlers[:], log.level, log.propagate
    log.handlers.clear()
    log.setLevel(logging.NOTSET)  # as in a fresh process
    kept = Kept()
    log.addHandler(kept)
    yield kept
    log.handlers[:], log.level, log.propagate = saved


def test_a_library_user_routes_the_messages_to_their_own_handler(tmp_path, own_handler, capsys):
    run = cifarlab.train(None, [f"output.dir={tmp_path}", *TINY, "output.progress=lines"])
    messages = [record.getMessage() for record in own_handler.records]
    assert any(text.startswith(f"run directory: {run.run_dir}") for text in messages)
    assert messages[-1].startswith("done: best.pt is epoch")
    warnings = [record.getMessage() for record in own_handler.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("warning: this run takes only 16 optimizer steps")
    err = capsys.readouterr().err
    assert "run directory:" not in err and "done:" not in err  # routed, not printed as well


def test_output_progress_none_is_quiet_but_for_warnings(tmp_path, capsys):
    cifarlab.train(None, [f"output.dir={tmp_path}", *TINY, "output.progress=none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [line for line in err if line.startswith("warning: ")] and len(err) == 1, err
    run = cifarlab.train(None, [f"output.dir={tmp_path}", *TINY, "output.progress=lines"])
    err = capsys.readouterr().err
    assert f"run directory: {run.run_dir}" in err and "done: best.pt is epoch" in err
    assert logging.getLogger("cifarlab").level == logging.INFO  # the quiet run's level was put back


def test_setting_the_level_quiets_a_library_users_runs(tmp_path, capsys):
    log = logging.getLogger("cifarlab")
    cifarlab.train(None, [f"output.dir={tmp_path}", *TINY, "output.progress=lines"])  # the default handler exists
    capsys.readouterr()
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        cifarlab.train(None, [f"output.dir={tmp_path}", *TINY, "output.progress=lines"])
    finally:
        log.setLevel(level)
    err = capsys.readouterr().err
    assert "run directory:" not in err and "done:" not in err and "warning: this run takes only" not in err
