"""`output.keep: k` keeps the checkpoints of the k best epochs by the monitor beside last.pt and best.pt."""
from __future__ import annotations

import pytest
import torch

import cifarlab
from cifarlab.run.checkpoint import load_checkpoint
from cifarlab.run.layout import epoch_checkpoints
from cifarlab.trainer.callbacks import Callback


@pytest.mark.slow  # a 5-epoch smoke run: about 6 s
def test_the_k_best_epochs_by_the_monitor_are_kept_and_the_others_removed(tmp_path):
    run = cifarlab.train("smoke", [f"output.dir={tmp_path}", "output.keep=2", "train.epochs=5",
                                   "checkpoint.monitor=test_loss", "train.precision=fp32", "train.device=cpu",
                                   "output.tensorboard=false", "output.progress=none"])
    losses = {row.epoch: row.test_loss for row in run.history}
    best_two = sorted(losses, key=lambda epoch: (losses[epoch], epoch))[:2]
    kept = epoch_checkpoints(run.run_dir)
    assert sorted(kept) == sorted(best_two) and len(losses) == 5
    for epoch, path in kept.items():  # each file is that epoch's own checkpoint
        assert load_checkpoint(path)["epoch"] == epoch
    assert load_checkpoint(run.run_dir / "checkpoints" / "best.pt")["epoch"] == best_two[0]
    assert (run.run_dir / "checkpoints" / "last.pt").is_file()  # never removed, whatever its rank
    assert not list((run.run_dir / "checkpoints").glob("*.tmp*"))


def test_keep_must_be_a_positive_count():
    from cifarlab.errors import UserError

    with pytest.raises(UserError, match="output.keep"):
        cifarlab.load_config("smoke", ["output.keep=0"])
    assert cifarlab.load_config("smoke").output.keep is None


class ForgetAfterTheFirstEpoch(Callback):
    """From epoch 2 on the model predicts nothing (zero weights, lr 0): epoch 1 stays the best one."""

    def on_epoch_start(self, state):
        if state.progress.epoch >= 1:
            for parameter in state.objects.model.parameters():
                parameter.data.zero_()
            for group in state.objects.optimizer.param_groups:
                group["lr"] = 0.0


@pytest.mark.slow  # a 3-epoch smoke run
def test_best_pt_of_an_earlier_epoch_says_completed_and_holds_that_epoch_as_saved(tmp_path):
    """best.pt is saved while the run is running; when it completes, the Checkpointer writes the record it kept
    with the final status (no read-back): the file equals that epoch's own checkpoint but for `status`."""
    run = cifarlab.train("smoke", [f"output.dir={tmp_path}", "output.keep=3", "train.epochs=3", "train.device=cpu",
                                   "train.precision=fp32", "schedule.name=constant", "output.tensorboard=false",
                                   "output.progress=none", "output.report=false"],
                         callbacks=[ForgetAfterTheFirstEpoch()])
    best = load_checkpoint(run.run_dir / "checkpoints" / "best.pt")
    own = load_checkpoint(epoch_checkpoints(run.run_dir)[1])
    assert run.status == "completed" and best["epoch"] == 1
    assert (best["status"], own["status"]) == ("completed", "running")
    assert list(best) == list(own) and best["history"] == own["history"]
    for name, tensor in own["model"].items():
        assert torch.equal(best["model"][name], tensor), name
