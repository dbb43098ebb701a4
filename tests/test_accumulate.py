"""Gradient accumulation (`train.accumulate`) and exact resume with MixUp/CutMix/colour jitter on.

All fp32 on the CPU. K micro-batches of B must update the weights as one batch of K*B does: the same
images reach the optimizer (the loader's batch is one optimizer step), only the summation order of the
gradients differs, so the weights agree to float32 rounding (tolerance below). BatchNorm would not agree
(it normalises each micro-batch by its own statistics), so that comparison uses GroupNorm.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from _compare import assert_same_checkpoint

from _runs import signal_at_step, train_cli_exit
from cifarlab.cli import main
from cifarlab.config import load_config
from cifarlab.errors import UserError
from cifarlab.experiment import build_state, load_data
from cifarlab.run.checkpoint import load_checkpoint
from cifarlab.runtime import make_runtime
from cifarlab.trainer.accumulate import grad_sync, micro_batches
from cifarlab.trainer.loop import train_step

QUIET = ["output.report=false", "output.tensorboard=false", "output.progress=none", "train.precision=fp32",
         "train.device=cpu", "model.norm=group", "schedule.name=constant", "optim.lr=0.05"]
# 84 images: two full steps of 32 and a ragged last step of 20 (micro-batches of 7, 7, 6 when B = 8).
DATA = ["data.dataset=synthetic", "data.options={num_train: 84, num_test: 16, image_size: 12}"]
# fp32: each weight tensor of the two runs agrees to this fraction of the step's largest change of that
# tensor. Measured on this CPU (AMD EPYC without AVX512-BF16, 1 thread): at most 2e-5 (1e-6 to 2e-5).
STEP_FRACTION = 1e-4


def fresh_state(tmp_path: Path, batch_size: int, accumulate: int, extra: list[str]):
    cfg = load_config("smoke", QUIET + DATA + [f"train.batch_size={batch_size}", f"train.accumulate={accumulate}",
                                               *extra])
    state = build_state(cfg, make_runtime(cfg.train, cfg.seed), load_data(cfg.data), tmp_path)
    state.objects.train_model.train()
    return state


def weights(state) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in state.objects.model.state_dict().items()}


MIXUP_SMOOTHING_CLIP = ["augment.mixup={alpha: 1.0}", "optim.label_smoothing=0.1", "optim.grad_clip=1"]


@pytest.mark.parametrize("extra", [[], MIXUP_SMOOTHING_CLIP], ids=["plain", "mixup-smoothing-clip"])
def test_k_micro_batches_update_the_weights_as_one_batch_of_k_times_b(tmp_path, extra):
    """Each of the epoch's steps (two full, one ragged) taken from the same start by both runs.

    One step at a time: over several steps the two runs drift apart by more than rounding, because max
    pooling routes the gradient through whichever input is largest and a 1e-7 difference can flip a near tie."""
    one_batch, accumulated = fresh_state(tmp_path, 32, 1, extra), fresh_state(tmp_path, 8, 4, extra)
    assert accumulated.steps_per_epoch == 3 and accumulated.objects.schedule.planned_steps == 3 * 2  # optimizer steps
    start = weights(one_batch)
    for (inputs, labels), (micro_inputs, micro_labels) in zip(one_batch.objects.train_loader.batches(0),
                                                              accumulated.objects.train_loader.batches(0)):
        assert torch.equal(inputs, micro_inputs) and torch.equal(labels, micro_labels)  # one step's images
        for state in (one_batch, accumulated):
            state.objects.model.load_state_dict(start)
            state.objects.optimizer.state.clear()  # no momentum from the previous step
        loss = train_step(one_batch, inputs, labels)
        micro_loss = train_step(accumulated, inputs, labels)
        assert torch.allclose(micro_loss, loss, rtol=1e-5)
        got, want = weights(accumulated), weights(one_batch)
        for name in want:
            step_size = (want[name] - start[name]).abs().max()
            assert (got[name] - want[name]).abs().max() <= STEP_FRACTION * step_size, name
        assert sum((want[name] != start[name]).any() for name in want) > len(want) // 2  # the steps did move


def test_micro_batches_are_views_of_near_equal_size():
    inputs, labels = torch.arange(20.0)[:, None], torch.arange(20)
    assert [len(y) for _, y in micro_batches(inputs, labels, 8)] == [7, 7, 6]
    assert [len(y) for _, y in micro_batches(inputs[:16], labels[:16], 8)] == [8, 8]
    assert torch.equal(torch.cat([y for _, y in micro_batches(inputs, labels, 8)]), labels)
    assert micro_batches(inputs, labels, 32)[0][0] is inputs


@pytest.mark.parametrize("scaled", [False, True], ids=["fp32", "grad-scaler"])
def test_grad_step_sums_micro_batch_gradients_and_steps_once(scaled):
    """GradStep.backward per micro-batch (zeroing on the first only) then one step equals one backward and
    step of the whole loss; with a GradScaler too (scaled backward per micro-batch, one unscale and step)."""
    from cifarlab.trainer.optim import GradStep

    inputs, targets = torch.randn(12, 5, generator=torch.Generator().manual_seed(0)), torch.arange(12) % 3
    models = [torch.nn.Linear(5, 3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    steps = [GradStep(torch.optim.SGD(m.parameters(), lr=0.5), torch.amp.GradScaler("cpu", init_scale=1024.0)
                      if scaled else None, grad_clip=1.0) for m in models]
    loss_fn = torch.nn.CrossEntropyLoss()
    steps[0](loss_fn(models[0](inputs), targets))
    for p in models[1].parameters():  # stale gradients that the first micro-batch must clear
        p.grad = torch.ones_like(p)
    for k, (x, y) in enumerate(zip(inputs.split(4), targets.split(4))):
        steps[1].backward(loss_fn(models[1](x), y) / 3, zero=k == 0)
    steps[1].step()
    for want, got in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(got, want, atol=1e-6)


def test_ddp_reduces_gradients_only_on_the_last_micro_batch(tmp_path, monkeypatch):
    """A real DistributedDataParallel (gloo, one process): its comm hook runs once per all-reduce."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    from torch.nn.parallel import DistributedDataParallel

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = DistributedDataParallel(torch.nn.Linear(4, 2))
        reduced_at: list[int] = []

        def hook(state, bucket):
            reduced_at.append(micro)
            future = torch.futures.Future()
            future.set_result(bucket.buffer())
            return future

        model.register_comm_hook(None, hook)
        for micro in range(4):
            with grad_sync(model, last=micro == 3):
                model(torch.randn(3, 4)).sum().backward()
        assert reduced_at == [3]
    finally:
        torch.distributed.destroy_process_group()


def test_accumulate_is_validated_against_the_training_images():
    with pytest.raises(UserError, match="train.accumulate"):
        load_config("smoke", ["train.accumulate=0"])
    cfg = load_config("smoke", QUIET + DATA + ["train.batch_size=32", "train.accumulate=4"])
    with pytest.raises(UserError, match=r"train.batch_size=32 x train.accumulate=4 is larger than the 84 training"):
        build_state(cfg, make_runtime(cfg.train, cfg.seed), load_data(cfg.data), Path("."))


# ---------------------------------------------------------------- whole runs through the CLI

RUN = ["deterministic=true", "train.device=cpu", "train.threads=1", "train.precision=fp32", "output.tensorboard=false",
       "output.progress=lines", "checkpoint.every_steps=3", "train.batch_size=32", "train.accumulate=2",
       "augment.mixup={alpha: 0.4, p: 0.5}", "augment.cutmix={p: 0.5}", "augment.color={p: 0.8}"]
TIMING = {"elapsed_seconds", "images_per_second", "wall_seconds", "train_seconds", "train_images_per_second",
          "mfu", "peak_flops"}  # MFU's peak on a CPU is a timed matmul probe


def _train(root: Path, *extra: str) -> Path:
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        assert main(["train", "smoke", f"output.dir={root}", *RUN, *extra]) == 0
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    (run_dir,) = [p for p in (root / "smoke").iterdir() if p.is_dir()]
    return run_dir


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("uninterrupted"))


def test_schedule_steps_and_logging_count_optimizer_steps(uninterrupted):
    """512 images, 32 x 2 per optimizer step: 8 steps an epoch, 16 in the 2 epochs the onecycle plans."""
    rows = _rows(uninterrupted)
    assert [int(r["step"]) for r in rows if r["kind"] == "epoch"] == [8, 16]
    assert [int(r["step"]) for r in rows if r["kind"] == "step"] == [4, 8, 12, 16]  # log_every_steps: 4
    cfg = load_config("smoke")
    start_lr = cfg.optim.lr / cfg.schedule.div_factor  # the cycle ends where it began (no annihilation)
    assert float(rows[-1]["lr"]) == pytest.approx(start_lr, rel=1e-3)
    peak = max(float(r["lr"]) for r in rows)
    assert peak > 5 * start_lr  # the cycle did go up: it ran over 16 steps, not 32 micro-batches


def test_resume_mid_epoch_with_mixing_colour_and_accumulation_equals_uninterrupted(tmp_path, capsys, uninterrupted):
    # epoch 2, third step: a signal as the step ends
    assert train_cli_exit("smoke", [f"output.dir={tmp_path}", *RUN], [signal_at_step(11)]) == 130
    (run_dir,) = [p for p in (tmp_path / "smoke").iterdir() if p.is_dir()]
    stopped = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (stopped["step"], stopped["epoch"], stopped["batch_in_epoch"]) == (11, 1, 3)
    assert main(["resume", str(run_dir)]) == 0
    capsys.readouterr()
    assert _rows(run_dir) == _rows(uninterrupted)
    summary, reference = (json.loads((d / "summary.json").read_text()) for d in (run_dir, uninterrupted))
    assert {k: v for k, v in summary.items() if k not in TIMING} == \
        {k: v for k, v in reference.items() if k not in TIMING}
    assert_same_checkpoint(run_dir / "checkpoints" / "last.pt", uninterrupted / "checkpoints" / "last.pt")
