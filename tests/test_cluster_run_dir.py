"""`cifarlab train RECIPE ... --run-dir PATH` in one process: a scheduler's warning signal (SIGUSR1) saves and
exits 138, and the same command then continues the run to the same end as a run never stopped; a run
killed before its first checkpoint starts again; a finished run is not trained twice."""
import signal

import pytest
from _compare import assert_same_checkpoint

from _runs import FAST, signal_at_step, train_cli_exit, tree_hashes
from cifarlab.cli import main
from cifarlab.run.checkpoint import load_checkpoint

# 2 epochs of 8 steps; progress=lines: the "resuming" line asserted below is an info line
RUN = ["smoke", *FAST, "train.precision=fp32", "checkpoint.every_steps=3", "output.progress=lines"]



@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("plain") / "run"
    assert main(["train", *RUN, "--run-dir", str(run_dir)]) == 0
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


@pytest.mark.slow  # three short training runs in process
def test_sigusr1_saves_and_exits_138_then_the_same_command_continues_exactly(tmp_path, capsys, uninterrupted):
    run_dir = tmp_path / "job-42"
    recipe, *overrides = RUN
    stop = signal_at_step(11, signal.SIGUSR1)
    assert train_cli_exit(recipe, overrides, [stop], run_dir=run_dir) == 128 + signal.SIGUSR1 == 138
    stopped = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (stopped["status"], stopped["step"]) == ("interrupted", 11)
    assert "SIGUSR1 received" in capsys.readouterr().err
    assert main(["train", *RUN, "--run-dir", str(run_dir)]) == 0
    assert "resuming" in capsys.readouterr().err
    finished = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert finished["step"] == uninterrupted["step"] == 16
    assert_same_checkpoint(finished, uninterrupted, ["model"])

    before = tree_hashes(run_dir)
    assert main(["train", *RUN, "--run-dir", str(run_dir)]) == 0
    assert "already finished" in capsys.readouterr().err
    assert tree_hashes(run_dir) == before, "a finished run is not trained twice"


@pytest.mark.slow
def test_a_run_stopped_before_its_first_checkpoint_starts_again(tmp_path, capsys, uninterrupted):
    run_dir = tmp_path / "job-7"
    assert main(["train", *RUN, "--run-dir", str(run_dir)]) == 0
    for path in [*run_dir.glob("checkpoints/*"), run_dir / "summary.json"]:  # as if killed at step 1
        path.unlink()
    (run_dir / "metrics.csv").write_text("kind,epoch,step\n")
    assert main(["train", *RUN, "--run-dir", str(run_dir)]) == 0
    assert "stopped before its first checkpoint: starting it again" in capsys.readouterr().err
    assert_same_checkpoint(run_dir / "checkpoints" / "last.pt", uninterrupted, ["model"])


def test_a_file_or_a_run_with_another_config_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["train", *RUN, "--run-dir", str(tmp_path / "file")]) == 2
    assert "--run-dir" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("name: smoke\nseed: 3\n")
    assert main(["train", *RUN, "--run-dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "seed=0 here but 3 there" in error, error


@pytest.mark.parametrize(("shared", "restarts", "warned"), [("True", "1", True), ("False", "1", False),
                                                            ("True", "0", False)])
def test_torchrun_restarts_with_a_shared_store_are_warned_about(monkeypatch, capsys, shared, restarts, warned):
    from cifarlab.runtime import _warn_restarts_with_shared_store

    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", shared)
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", restarts)
    _warn_restarts_with_shared_store()
    assert ("TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in capsys.readouterr().err) == warned


@pytest.mark.slow  # two short training runs in process
def test_the_python_facade_continues_a_named_run_as_the_command_does(tmp_path, uninterrupted):
    """`cifarlab.train_or_continue(..., run_dir=)`: a run stopped by the scheduler's signal is continued by the
    same call to the end of a run never stopped; once finished, the call trains nothing."""
    import cifarlab

    run_dir, (recipe, *overrides) = tmp_path / "job-9", RUN
    usr1 = [signal_at_step(5, signal.SIGUSR1)]  # the scheduler's warning before preemption
    stopped = cifarlab.train_or_continue(recipe, overrides, run_dir=run_dir, callbacks=usr1)
    assert stopped.status == "interrupted"
    run = cifarlab.train_or_continue(recipe, overrides, run_dir=run_dir)
    assert run.status == "completed" and run.run_dir == run_dir
    finished = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert_same_checkpoint(finished, uninterrupted, ["model"], where="the uninterrupted run")
    before = tree_hashes(run_dir)
    assert cifarlab.train_or_continue(recipe, overrides, run_dir=run_dir).best_test_acc == run.best_test_acc
    assert tree_hashes(run_dir) == before, "a finished run is not trained twice"
