"""MLflow, read back with MLflow's own client: the run's files and its best model as artifacts, the model
served by mlflow.pytorch / pyfunc, and a run directory that still logs to its MLflow run after a move."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import cifarlab

QUIET = ["train.device=cpu", "train.threads=1", "output.progress=none", "output.tensorboard=false"]


@pytest.mark.slow  # a run with its report, torch.export of the model, a move and a resume: ~1 min, loaded 2 cores
def test_mlflow_gets_the_runs_files_and_a_servable_best_model_and_survives_a_move(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import mlflow.pyfunc
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    run = cifarlab.train("smoke", [f"output.dir={tmp_path / 'a'}", *QUIET, "train.epochs=1", "schedule.peak_epoch=0.5",
                                   "output.report=true", "output.mlflow=true"])
    record = json.loads((run.run_dir / "mlflow.json").read_text())
    assert record == {"store": "mlruns", "run_id": record["run_id"]}
    store = (run.run_dir / "mlruns").resolve().as_uri()
    client, run_id = MlflowClient(tracking_uri=store), record["run_id"]
    top = {f.path for f in client.list_artifacts(run_id)}
    assert {"config.yaml", "summary.json", "metrics.csv", "report.md", "report.html", "plots", "model"} <= top
    plots = {f.path for f in client.list_artifacts(run_id, "plots")}
    assert "plots/curves.png" in plots or len(plots) >= 3, plots
    summary = json.loads(open(client.download_artifacts(run_id, "summary.json", str(tmp_path))).read())
    assert summary == json.loads((run.run_dir / "summary.json").read_text())

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    served = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    ours = cifarlab.load_model(run.run_dir / "checkpoints" / "best.pt", device="cpu", precision="fp32")
    images = torch.randn(5, ours.in_channels, ours.image_size, ours.image_size)
    with torch.no_grad():
        expected = ours.module(images)
        assert torch.allclose(served(images), expected, atol=1e-5)  # fp32 both sides
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert torch.allclose(torch.as_tensor(pyfunc.predict(images.numpy())), expected, atol=1e-5)
    assert pyfunc.metadata.metadata["classes"] == list(ours.classes)

    moved = tmp_path / "b" / run.run_dir.name
    shutil.move(run.run_dir, moved)  # the whole run directory, its MLflow store inside
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    cifarlab.resume(moved, epochs=2)
    client = MlflowClient(tracking_uri=(moved / "mlruns").resolve().as_uri())
    assert [m.step for m in client.get_metric_history(run_id, "epoch/test_acc")] == [8, 16]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert "model" in {f.path for f in client.list_artifacts(run_id)}
    assert not run.run_dir.exists()  # nothing was written to where the run used to be
