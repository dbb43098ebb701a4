"""The Python API mirrors the CLI and works from a notebook."""
import cifarlab
import cifarlab.trainer.loop  # noqa: F401  (importing the subpackage must not shadow cifarlab.train)


def test_train_and_resume_are_functions_after_submodule_imports():
    assert callable(cifarlab.train) and callable(cifarlab.resume)


def test_train_returns_the_run_with_its_metrics(tmp_path):
    run = cifarlab.train("smoke", [f"output.dir={tmp_path}", "output.tensorboard=false"])
    assert run.run_dir.parent == tmp_path / "smoke" and (run.run_dir / "summary.json").is_file()
    assert [row["epoch"] for row in run.history] == [1, 2]
    assert run.best_test_acc == max(row["test_acc"] for row in run.history)
    assert run.config.name == "smoke" and run.summary["status"] == "completed"


def _arrays(n_train=256, n_test=128, seed=0):
    """Two classes a linear model can tell apart: bright vs dark 12x12 grey images."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def make(n):
        labels = rng.integers(0, 2, n)
        images = rng.integers(0, 100, (n, 12, 12)) + 120 * labels[:, None, None]
        return images.astype(np.uint8), labels

    return (*make(n_train), *make(n_test), ["dark", "bright"])


SMALL = ["output.tensorboard=false", "output.progress=none", "train.device=cpu", "train.precision=fp32",
         "train.epochs=3", "model.options={width: 4}", "augment.crop=null", "augment.flip=null"]


def test_train_on_arrays_from_python_and_evaluating_on_them_needs_them_again(tmp_path, capsys):
    data = _arrays()
    run = cifarlab.train("smoke", [f"output.dir={tmp_path}", *SMALL], data=data)
    assert run.config.data.dataset == "arrays" and run.best_test_acc > 0.9
    assert cifarlab.load_model(run.run_dir / "checkpoints" / "best.pt").classes == ("dark", "bright")
    from cifarlab.cli import main

    assert main(["eval", str(run.run_dir / "checkpoints" / "best.pt")]) == 2
    assert "arrays passed from Python" in capsys.readouterr().err


def test_user_callbacks_see_every_hook_after_cifarlabs_own(tmp_path):
    from cifarlab.trainer.callbacks import Callback

    class Recorder(Callback):
        def __init__(self):
            self.seen = []

        def on_epoch_end(self, state):
            # cifarlab's Checkpointer ran first: this epoch's last.pt is already on disk.
            self.seen.append((state.progress.epoch, state.progress.history[-1]["test_acc"],
                              (state.run_dir / "checkpoints" / "last.pt").is_file()))

        def on_fit_end(self, state):
            self.seen.append(("end", state.status))

    recorder = Recorder()
    run = cifarlab.train("smoke", [f"output.dir={tmp_path}", *SMALL], callbacks=[recorder])
    assert [entry[0] for entry in recorder.seen] == [1, 2, 3, "end"]
    assert all(entry[2] for entry in recorder.seen[:3]) and recorder.seen[-1] == ("end", "completed")
    assert [entry[1] for entry in recorder.seen[:3]] == [row["test_acc"] for row in run.history]
