"""No host synchronisation inside a training step (issue 10): counted on the CPU, enforced on a GPU.

A sync in the step makes the host wait for the GPU every step, so host time and GPU time add up
(shared/gpu/FINDINGS.md). `SyncCounter` sees the calls that would sync on any device, so these tests
catch a new `.item()` or `if tensor:` on a CPU-only machine before it costs anything on a GPU.
"""
from pathlib import Path

import pytest
import torch

from cifarlab.config import load_config
from cifarlab.experiment import build_state, load_data
from cifarlab.runtime import make_runtime
from cifarlab.trainer.ema import EMA
from cifarlab.trainer.loop import train_step
from cifarlab.trainer.syncs import SyncCounter

QUIET = ["output.report=false", "output.tensorboard=false", "output.progress=none"]
SMALL_DATA = ["data.dataset=synthetic", "data.options={num_train: 64, num_test: 16, image_size: 16}",
              "data.mean=null", "data.std=null", "train.batch_size=16", "schedule.lr_peak=null"]
# Recipes shrunk to seconds; between them: SGD and Adam, onecycle/constant/step/plateau schedules,
# crop (zero, reflect), i.i.d. and alternating flips, rotate, cutout, colour jitter, MixUp/CutMix, EMA,
# gradient accumulation, BatchNorm and LayerNorm.
CASES = {  # id: (recipe, overrides)
    "smoke": ("smoke", []),
    "fast": ("fast", ["model.options={widths: [8, 16, 16]}"]),
    "fast-ema": ("fast", ["model.options={widths: [8, 16, 16]}", "train.ema=0.98"]),
    "fast-ema-every-2": ("fast", ["model.options={widths: [8, 16, 16]}", "train.ema=0.98", "train.ema_every=2"]),
    "fast-lookahead": ("fast", ["model.options={widths: [8, 16, 16]}", "train.lookahead={every: 2}"]),
    "custom-resnet-onecycle": ("custom-resnet-onecycle", []),
    "resnet18-cutout": ("resnet18-cutout", []),
    "resnet18-layernorm-plateau": ("resnet18-layernorm-plateau", []),
    "resnet18-steplr": ("resnet18-steplr", []),
    "smoke-mix-color": ("smoke", ["augment.mixup={p: 0.5}", "augment.cutmix={p: 0.5}", "augment.color={p: 0.5}"]),
    "smoke-accumulate": ("smoke", ["train.batch_size=8", "train.accumulate=2", "augment.mixup={}"]),
}
# The full-size networks take seconds for three CPU steps: slow (the small ones keep the fast tier honest).
STEP_CASES = [pytest.param(case, marks=[pytest.mark.slow] * (CASES[case][0] != "smoke" and case.startswith("resnet18")))
              for case in CASES]
STEPS = 3


def tiny_state(tmp_path: Path, case: str):
    recipe, overrides = CASES[case]
    cfg = load_config(recipe, QUIET + SMALL_DATA + overrides)
    return build_state(cfg, make_runtime(cfg.train, cfg.seed), load_data(cfg.data), tmp_path)


def host_state(optimizer: torch.optim.Optimizer):
    """Tensors torch.optim keeps on the host by design (Adam's step counts): reading them is no GPU sync."""
    def ignore(tensor: torch.Tensor) -> bool:
        return any(tensor is state.get("step") for state in optimizer.state.values())
    return ignore


def test_counter_sees_every_kind_of_sync_and_nothing_else():
    x = torch.ones(4)
    with SyncCounter() as syncs:
        y = (x * 2).sum() + torch.where(x > 0, 0.5, x).mean()  # device-side only: not counted
        assert syncs.total == 0, syncs.report()
        y.item(), bool(x[0] > 0), x.tolist(), float(y), int(x[0]), x.nonzero(), torch.nonzero(x)
        x.cpu(), x.numpy(), [0, 1][x[0].long()], torch.tensor([1.0]), x[x > 0]
    assert dict(syncs.counts) == {
        "item": 1, "__bool__": 1, "tolist": 1, "__float__": 1, "__int__": 1, "nonzero": 1, "aten.nonzero": 1,
        "cpu": 1, "numpy": 1, "__index__": 1, "aten.lift_fresh": 1, "aten.index": 1,
    }
    assert len(syncs.stacks) == 5 and "test_no_sync.py" in syncs.stacks[0][1][-1]
    assert torch.Tensor.item is torch._C.TensorBase.item  # patches undone
    assert "__bool__" not in vars(torch.Tensor)


@pytest.mark.parametrize("case", CASES)
def test_loader_batches_make_no_host_sync(tmp_path, case):
    state = tiny_state(tmp_path, case)
    with SyncCounter() as syncs:
        for _ in state.objects.train_loader.batches(epoch=1):
            pass
    assert syncs.total == 0, syncs.report()


@pytest.mark.parametrize("case", STEP_CASES)
def test_training_steps_make_no_host_sync(tmp_path, case):
    state = tiny_state(tmp_path, case)
    state.objects.train_model.train()
    batches = state.objects.train_loader.batches(epoch=0)
    train_step(state, *next(batches))  # the first step creates the optimizer's state lazily
    state.progress.step += 1
    with SyncCounter(ignore=host_state(state.objects.optimizer)) as syncs:
        for _ in range(STEPS):
            train_step(state, *next(batches))
            state.progress.step += 1
    assert syncs.total == 0, syncs.report()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", ["fast", "fast-ema", "fast-ema-every-2", "fast-lookahead",
                                  "custom-resnet-onecycle", "resnet18-steplr", "smoke-mix-color", "smoke-accumulate"])
def test_training_steps_make_no_cuda_sync(tmp_path, case):
    state = tiny_state(tmp_path, case)
    state.objects.train_model.train()
    batches = state.objects.train_loader.batches(epoch=0)
    train_step(state, *next(batches))  # first step: lazy optimizer state and cuDNN autotuning may sync
    state.progress.step += 1
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(STEPS):
            train_step(state, *next(batches))
            state.progress.step += 1
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", ["fast", "custom-resnet-onecycle", "resnet18-cutout"])
def test_loader_batches_and_ema_updates_make_no_cuda_sync(tmp_path, case):
    state = tiny_state(tmp_path, case)
    ema = EMA(state.objects.model, 0.9)
    batches = state.objects.train_loader.batches(epoch=1)
    next(batches)  # the epoch's permutation comes from the host once per epoch, before the first batch
    ema.update(state.objects.model, 0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step, _ in enumerate(batches, start=1):
            ema.update(state.objects.model, step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
