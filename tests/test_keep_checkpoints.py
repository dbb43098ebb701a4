"""`output.keep: k` keeps the checkpoints of the k best epochs by the monitor beside last.pt and best.pt."""
from __future__ import annotations

import pytest

import cifarlab
from cifarlab.run.checkpoint import load_checkpoint
from cifarlab.run.layout import epoch_checkpoints


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
