"""Lookahead (train.lookahead) does what airbench94's LookaheadState does, on the schedule it uses."""
import copy

import pytest
import torch
from _compare import assert_same_state
from torch import nn

from cifarlab.trainer.lookahead import Lookahead
from cifarlab.trainer.syncs import SyncCounter


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(5))


def training_steps(model: nn.Module, steps: int):
    """Stand-in optimizer steps: every float tensor of the state moves by its own noise."""
    generator = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        with torch.no_grad():
            for tensor in model.state_dict().values():
                if tensor.is_floating_point():
                    tensor.add_(torch.randn(tensor.shape, generator=generator))
        yield step


def airbench(model: nn.Module, every, decay, power, start_epoch, planned_steps, steps_per_epoch):
    """airbench94's loop, written out as it is there: LookaheadState over the state dict."""
    net_ema = None
    for step in training_steps(model, planned_steps):
        epoch = (step - 1) // steps_per_epoch
        if epoch >= start_epoch and step % every == 0:
            if net_ema is None:
                net_ema = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                rho = decay**every * (step / planned_steps) ** power
                for ema_t, net_t in zip(net_ema.values(), model.state_dict().values()):
                    if net_t.is_floating_point():
                        ema_t.lerp_(net_t, 1 - rho)
                        net_t.copy_(ema_t)
        if step % steps_per_epoch == 0 and net_ema is not None:  # the end of each epoch
            for ema_t, net_t in zip(net_ema.values(), model.state_dict().values()):
                if net_t.is_floating_point():
                    net_t.copy_(ema_t)
    return model


@pytest.mark.parametrize("every, start_epoch, power", [(5, 1, 3.0), (2, 0, 1.0), (4, 2, 0.0)])
def test_matches_airbench94s_lookahead_with_batchnorm_statistics_included(every, start_epoch, power):
    model = small_model()
    model(torch.randn(2, 3, 6, 6))  # materialise the lazy layer
    expected = airbench(copy.deepcopy(model), every, 0.95, power, start_epoch, planned_steps=24, steps_per_epoch=8)
    lookahead = Lookahead(every, 0.95, power, start_epoch, planned_steps=24)
    for step in training_steps(model, 24):
        lookahead.update(model, step, epoch=(step - 1) // 8, epoch_end=step % 8 == 0)
    for name, tensor in expected.state_dict().items():
        assert torch.allclose(model.state_dict()[name], tensor, atol=1e-6), name


def test_model_takes_the_slow_weights_at_each_epoch_end_and_the_state_round_trips():
    model = small_model()
    model(torch.randn(2, 3, 6, 6))
    lookahead = Lookahead(every=2, decay=0.9, power=1.0, start_epoch=0, planned_steps=10)
    for step in training_steps(model, 5):
        lookahead.update(model, step, epoch=0, epoch_end=step == 5)
    floats = [t for t in model.state_dict().values() if t.is_floating_point()]
    assert all(torch.equal(f, s) for f, s in zip(floats, lookahead.slow))  # epoch end: model == slow

    restored = Lookahead(every=2, decay=0.9, power=1.0, start_epoch=0, planned_steps=10)
    restored.load_state_dict(lookahead.state_dict(), model)
    assert_same_state(restored.slow, lookahead.slow)
    with pytest.raises(ValueError, match="lookahead weights do not match the model"):
        restored.load_state_dict({"slow": lookahead.state_dict()["slow"][:-1]}, model)


def test_updates_make_no_host_sync():
    model = small_model()
    model(torch.randn(2, 3, 6, 6))
    lookahead = Lookahead(every=1, decay=0.95, power=3.0, start_epoch=0, planned_steps=6)
    lookahead.update(model, 1, epoch=0, epoch_end=False)  # the first takes the snapshot
    with SyncCounter() as syncs:
        for step in range(2, 7):
            lookahead.update(model, step, epoch=0, epoch_end=step == 6)
    assert syncs.total == 0, syncs.report()
