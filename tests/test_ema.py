"""trainer/ema.py: the same average as AveragedModel's EMA, every-k updates, checkpoints, no host sync."""
from pathlib import Path

import pytest
import torch
from _compare import assert_same_state
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cifarlab.config import load_config
from cifarlab.data.prepare import load_data
from cifarlab.models.registry import create_model
from cifarlab.runtime import make_runtime
from cifarlab.trainer.build import build_state
from cifarlab.trainer.ema import EMA
from cifarlab.trainer.loop import train_step
from cifarlab.trainer.syncs import SyncCounter

DECAY = 0.9
QUIET = ["output.report=false", "output.tensorboard=false", "output.progress=none"]


class LoopAveragedModel(AveragedModel):
    """torch's EMA (what cifarlab used before trainer/ema.py), callable the way the loop calls an EMA."""

    def update(self, model, step=None):
        self.update_parameters(model)


def averaged_model(model, decay=DECAY):
    """torch's EMA: AveragedModel with buffers averaged too."""
    return LoopAveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def fast_state(tmp_path: Path, make_ema):
    """A shrunk `fast` recipe (fastnet, BatchNorm, SGD + Nesterov, onecycle) with the given EMA."""
    cfg = load_config("fast", QUIET + [
        "data.dataset=synthetic", "data.options={num_train: 96, num_test: 16, image_size: 16}",
        "data.mean=null", "data.std=null", "model.options={widths: [8, 16, 16]}", "train.batch_size=16"])
    state = build_state(cfg, make_runtime(cfg.train, cfg.seed), load_data(cfg.data), tmp_path)
    state.objects.ema = make_ema(state.objects.model)
    state.objects.train_model.train()
    return state


def floats(module):
    return {k: v for k, v in module.state_dict().items() if v.is_floating_point()}


def test_matches_averaged_model_over_real_training_steps(tmp_path):
    ours = fast_state(tmp_path / "a", lambda m: EMA(m, DECAY))
    theirs = fast_state(tmp_path / "b", averaged_model)
    for state in (ours, theirs):
        for inputs, labels in state.objects.train_loader.batches(0):  # 6 steps through the loop's own train_step
            train_step(state, inputs, labels)
            state.progress.step += 1
    trained = theirs.objects.model.state_dict()
    assert_same_state(ours.objects.model.state_dict(), trained, "same training")
    expected, got = floats(theirs.objects.ema.module), floats(ours.objects.ema.module)
    assert expected.keys() == got.keys() and len(got) > 10
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-7, msg=key)
    # and the average really moved away from the model (decay 0.9 over 6 steps)
    assert not torch.equal(got["fc.weight"], ours.objects.model.fc.weight)
    assert int(ours.objects.ema.n_averaged) == int(theirs.objects.ema.n_averaged) == 6


def test_state_dict_keys_match_averaged_model_and_resume_continues_the_average():
    model = create_model("convnet", num_classes=10, in_channels=3, norm="batch", dropout=0.0, width=4)
    old = averaged_model(model)
    old.update_parameters(model)
    ours = EMA(model, DECAY)
    assert ours.state_dict().keys() == old.state_dict().keys()
    ours.load_state_dict(old.state_dict())  # a checkpoint written by today's code
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    old.update_parameters(model)
    ours.update(model)  # n_averaged=1 was loaded: this must average, not copy
    for key, value in floats(old.module).items():
        torch.testing.assert_close(floats(ours.module)[key], value, rtol=0, atol=1e-7, msg=key)
    assert int(ours.n_averaged) == 2
    assert ours.state_dict().keys() == old.state_dict().keys()  # still, after updates (nothing else registered)
    resumed = EMA(model, DECAY)
    resumed.load_state_dict(ours.state_dict())


@pytest.mark.parametrize("every", [2, 5])
def test_every_k_updates_on_multiples_of_k_with_decay_to_the_k(every):
    model = torch.nn.Linear(3, 2)
    start = [p.detach().clone() for p in model.parameters()]
    per_step, sparse = EMA(model, DECAY), EMA(model, DECAY, every=every)
    per_step.update(model, step=0)
    sparse.update(model, step=0)  # step 0 is a multiple of every: the first update copies
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-2.0).add_(1.0)  # a new constant target
    steps = 3 * every
    for step in range(1, steps + 1):
        per_step.update(model, step)
        sparse.update(model, step)
    assert int(sparse.n_averaged) == 1 + 3 and int(per_step.n_averaged) == 1 + steps
    for ours, reference, target, first in zip(sparse.module.parameters(), per_step.module.parameters(),
                                                model.parameters(), start):
        torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours, target + (first - target) * DECAY**steps, rtol=1e-6, atol=1e-6)


def test_integer_buffers_are_copied_from_the_model():
    model = create_model("convnet", num_classes=10, in_channels=3, norm="batch", dropout=0.0, width=4)
    ema = EMA(model, DECAY)
    model.train()
    for _ in range(3):
        model(torch.randn(4, 3, 16, 16))
        ema.update(model)
    counts = {k: v for k, v in ema.module.state_dict().items() if k.endswith("num_batches_tracked")}
    assert counts and all(int(v) == 3 for v in counts.values())


def test_updates_make_no_host_sync_and_leave_the_model_alone():
    model = create_model("convnet", num_classes=10, in_channels=3, norm="batch", dropout=0.0, width=4)
    ema = EMA(model, DECAY, every=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with SyncCounter() as syncs:
        for step in range(6):
            ema.update(model, step)
    assert syncs.total == 0, syncs.report()
    assert_same_state(model.state_dict(), before)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="decay"):
        EMA(torch.nn.Linear(2, 2), 1.0)
    with pytest.raises(ValueError, match="every"):
        EMA(torch.nn.Linear(2, 2), 0.9, every=0)
