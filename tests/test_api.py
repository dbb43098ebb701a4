"""The Python API mirrors the CLI and works from a notebook."""
import cifarlab
import cifarlab.training.loop  # noqa: F401  (importing the subpackage must not shadow cifarlab.train)


def test_train_and_resume_are_functions_after_submodule_imports():
    assert callable(cifarlab.train) and callable(cifarlab.resume)


def test_train_returns_the_run_with_its_metrics(tmp_path):
    run = cifarlab.train("smoke", [f"output.dir={tmp_path}", "output.tensorboard=false"])
    assert run.run_dir.parent == tmp_path / "smoke" and (run.run_dir / "summary.json").is_file()
    assert [row["epoch"] for row in run.history] == [1, 2]
    assert run.best_test_acc == max(row["test_acc"] for row in run.history)
    assert run.config.name == "smoke" and run.summary["status"] == "completed"
