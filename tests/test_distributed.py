"""`torchrun --nproc_per_node=2 -m cifarlab train ...`: DDP on CPU (gloo) learns like one process, only rank 0
writes, and resume continues a DDP run."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifarlab import load_model
from cifarlab.run.checkpoint import load_checkpoint
from cifarlab.use.evaluate import evaluate_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src"
# Same global batch (64) in both runs; 2048 images make the accuracy a stable figure, 12 px keep it quick.
# lr 0.002 leaves the runs mid-way (~77% for one process; 0.001 gives ~51%, 0.01 ~100%), so a DDP mistake
# that changes the effective step (gradients summed instead of averaged, duplicated data) would show.
COMMON = ["data.options={num_train: 2048, num_test: 512, image_size: 12}", "optim.lr=0.002", "train.precision=fp32",
          "train.epochs=2", "train.batch_size=64",
          "output.tensorboard=false", "output.report=false", "output.progress=lines", "train.log_every_steps=16"]

# Two torchrun launches of two processes each: a minute or more.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                 reason="needs torch.distributed with gloo")]


def launch(args: list[str], nproc: int, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    if nproc == 1:
        command = [sys.executable, "-m", "cifarlab", *args]
    else:  # --standalone: a private rendezvous on a free local port
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "cifarlab", *args]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def only_run(root: Path) -> Path:
    runs = [p for p in root.glob("*/*") if p.is_dir()]
    assert len(runs) == 1, f"expected exactly one run directory (rank 0's) under {root}, found {runs}"
    return runs[0]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    single = launch(["train", "smoke", *COMMON, f"output.dir={tmp / 'one'}"], 1, tmp)
    # TensorBoard on for the two-process run: its ranks end without the interpreter's shutdown (launch.exit_code)
    double = launch(["train", "smoke", *COMMON, "output.tensorboard=true", f"output.dir={tmp / 'two'}"], 2, tmp)
    return tmp, single, double


def test_two_processes_learn_like_one_at_the_same_global_batch(ddp_runs):
    tmp, _, double = ddp_runs
    one = json.loads((only_run(tmp / "one") / "summary.json").read_text())
    two = json.loads((only_run(tmp / "two") / "summary.json").read_text())
    assert "2 processes" in two["device"]
    assert one["final_test_acc"] > 0.6 and two["final_test_acc"] > 0.6
    assert abs(one["final_test_acc"] - two["final_test_acc"]) < 0.08, (one["final_test_acc"], two["final_test_acc"])
    assert double.stderr.count("done: best.pt is epoch") == 1, "only rank 0 should report"


def test_metrics_count_every_test_image_once_and_only_rank_0_writes(ddp_runs):
    tmp, _, _ = ddp_runs
    run = only_run(tmp / "two")
    epochs = [line for line in (run / "metrics.csv").read_text().splitlines() if line.startswith("epoch,")]
    assert len(epochs) == 2, "one epoch row per epoch, from rank 0 only"
    # The evaluation is reduced over both ranks' shards; one process evaluating rank 0's weights on all 512
    # test images must agree (up to rank 1 using its own BatchNorm running statistics for its shard).
    summary = json.loads((run / "summary.json").read_text())
    single = evaluate_checkpoint(load_model(run / "checkpoints" / "last.pt"))
    assert single.images == 512
    assert abs(single.test_acc - summary["final_test_acc"]) < 0.03, (single, summary["final_test_acc"])


def test_a_ddp_run_ends_with_every_file_whole_though_its_processes_skip_the_interpreters_shutdown(ddp_runs):
    # Each rank leaves with os._exit once the command is done (a gloo group kept alive by DDP aborted 2 of 46
    # finished runs during finalization): what the run wrote must be complete by then, and the last line out.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, _, double = ddp_runs
    run = only_run(tmp / "two")
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    summary = json.loads((run / "summary.json").read_text())
    assert events.Scalars("hparam/final_test_acc")[0].value == pytest.approx(summary["final_test_acc"])
    steps_per_epoch = 2048 // 64
    assert [event.step for event in events.Scalars("epoch/test_acc")] == [steps_per_epoch, 2 * steps_per_epoch]
    assert double.stderr.rstrip().splitlines()[-1].startswith("done: best.pt is epoch"), double.stderr[-500:]


def test_resume_of_a_ddp_run_matches_the_uninterrupted_run(ddp_runs):
    tmp, _, _ = ddp_runs
    finished = only_run(tmp / "two")
    run = tmp / "resume" / "smoke" / finished.name
    shutil.copytree(finished, run)
    # Roll back to the end of epoch 1, as if the run had been stopped there: last.prev.pt is that checkpoint.
    shutil.copy(run / "checkpoints" / "last.prev.pt", run / "checkpoints" / "last.pt")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = launch(["resume", str(run)], 2, tmp)
    assert resumed.stderr.count("resuming") == 1, "only rank 0 announces"
    summary = json.loads((run / "summary.json").read_text())
    uninterrupted = json.loads((finished / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and summary["status"] == "completed"
    assert summary["final_test_acc"] == pytest.approx(uninterrupted["final_test_acc"], abs=0.01)
