"""The core loop: it learns, its batches are reproducible and shardable, its schedule and precision are right."""
import math
import warnings
from pathlib import Path

import pytest
import torch

from _runs import FAST
from cifarlab.cli import main
from cifarlab.config import load_config
from cifarlab.data.augment import build_augment
from cifarlab.data.loader import DeviceLoader
from cifarlab.data.normalize import normalize, to_float
from cifarlab.data.prepare import load_data
from cifarlab.data.sources import dataset_available
from cifarlab.experiment import train
from cifarlab.runtime import make_runtime, resolve_precision
from cifarlab.trainer.build import build_state
from cifarlab.trainer.loop import train_step
from cifarlab.trainer.optim import Schedule

CPU = torch.device("cpu")
QUIET = ["output.report=false", "output.tensorboard=false", "output.progress=none"]


def tiny_state(tmp_path: Path, overrides: list[str]):
    cfg = load_config("smoke", QUIET + overrides)
    runtime = make_runtime(cfg.train, cfg.seed)
    return build_state(cfg, runtime, load_data(cfg.data), tmp_path)


def test_one_batch_can_be_overfit(tmp_path):
    state = tiny_state(tmp_path, ["data.options={num_train: 32, num_test: 32, image_size: 16}", "augment={}",
                                  "train.batch_size=32", "optim.name=adam", "optim.lr=0.01", "optim.momentum=0",
                                  "schedule.name=constant", "optim.weight_decay=0", "train.precision=fp32"])
    inputs, labels = next(iter(state.objects.train_loader))
    state.objects.train_model.train()
    for _ in range(60):
        train_step(state, inputs, labels)
    with torch.no_grad():
        loss = state.objects.loss_fn(state.objects.train_model(inputs), labels).item()
    assert loss < 0.05, f"a 32-image batch should be memorised in 60 steps, loss is still {loss:.3f}"


@pytest.mark.slow  # 2 epochs on 3000 real images
@pytest.mark.skipif(not dataset_available("fashion_mnist"), reason="Fashion-MNIST is not on this machine")
def test_short_real_fashion_mnist_run_learns(tmp_path):
    run = train("fmnist-quick", QUIET + [
        f"output.dir={tmp_path}", "data.train_subset=3000", "data.test_subset=1000", "train.epochs=2",
        "model.options={width: 8}", "train.batch_size=100", "train.tta=false", "train.ema=null",
        "checkpoint.every_epochs=100", "train.precision=fp32"])
    assert run.summary["status"] == "completed"
    assert run.best_test_acc > 0.60, (f"2 epochs on 3000 real images should beat chance (10%) by far, "
                                      f"got {run.best_test_acc}")


# ------------------------------------------------------------------------------------------ loader

def make_loader(train: bool = True, augment: bool = True, batch_size: int = 16, num_images: int = 100, **kw):
    generator = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (num_images, 3, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.arange(num_images)  # labels double as image ids
    aug_cfg = load_config(None, ["augment.crop={padding: 2}", "augment.flip={p: 0.5}",
                                 "augment.cutout={size: 3}"]).augment
    return DeviceLoader(images, labels, batch_size=batch_size, device=CPU, mean=(0.5,) * 3, std=(0.25,) * 3,
                        train=train, augment=build_augment(aug_cfg, 8, 3, seed=3) if augment else None,
                        seed=11, **kw)


def test_same_seed_gives_same_batches():
    first, second = make_loader(), make_loader()
    for (x1, y1), (x2, y2) in zip(first.batches(2), second.batches(2)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(next(iter(first.batches(0)))[1], next(iter(first.batches(1)))[1]), \
        "each epoch should have its own permutation"


@pytest.mark.parametrize("k", [1, 3, 5])
def test_batch_k_is_the_same_from_a_mid_epoch_start(k):
    loader = make_loader()
    full = list(loader.batches(epoch=1))
    resumed = next(iter(loader.batches(epoch=1, start=k)))
    assert torch.equal(resumed[0], full[k][0]) and torch.equal(resumed[1], full[k][1])


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_shards_together_are_the_single_process_batch(world_size):
    # 144 = 4 x 32 + 16: the last, partial batch still has >= 2 images per rank, so every rank keeps it.
    single = list(make_loader(augment=False, batch_size=32, num_images=144).batches(epoch=2))
    shards = [list(make_loader(augment=False, batch_size=32, num_images=144, rank=r,
                               world_size=world_size).batches(epoch=2)) for r in range(world_size)]
    assert all(len(s) == len(single) for s in shards)
    for k, (inputs, labels) in enumerate(single):
        for rank in range(world_size):
            assert torch.equal(shards[rank][k][0], inputs[rank::world_size])
            assert torch.equal(shards[rank][k][1], labels[rank::world_size])
    # With augmentation every rank draws its own randomness, but the images are still the same ones.
    augmented = [make_loader(batch_size=32, num_images=144, rank=r, world_size=world_size) for r in range(world_size)]
    for k, (_, labels) in enumerate(single):
        union = torch.cat([next(iter(loader.batches(2, start=k)))[1] for loader in augmented])
        assert torch.equal(union.sort().values, labels.sort().values)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_test_split_is_unaugmented_in_order_and_counted_once_across_ranks(world_size):
    loaders = [make_loader(train=False, batch_size=16, num_images=99, rank=r, world_size=world_size)
               for r in range(world_size)]
    seen = torch.cat([labels for loader in loaders for _, labels in loader])
    assert torch.equal(seen.sort().values, torch.arange(99)), "every test image exactly once over all ranks"
    single = make_loader(train=False, batch_size=16, num_images=99)
    inputs = torch.cat([x for x, _ in single])
    expected = normalize(to_float(single.images), single.mean, single.std)
    assert torch.equal(inputs, expected), "the test split must be unaugmented and in dataset order"
    assert torch.equal(torch.cat([y for _, y in single]), torch.arange(99))


def test_training_remainder_too_small_for_batchnorm_is_dropped():
    assert len(make_loader(batch_size=16, num_images=97)) == 6  # 1 left over: dropped
    assert len(make_loader(batch_size=16, num_images=100)) == 7  # 4 left over: kept
    assert len(make_loader(batch_size=16, num_images=99, world_size=2, rank=0)) == 6  # 3 < 2 per rank


# ------------------------------------------------------------------------------------------ schedule, precision

def lrs_over(schedule_overrides: list[str], epochs: int = 24, steps_per_epoch: int = 10) -> list[float]:
    cfg = load_config(None, ["schedule.name=onecycle", "optim.lr=0.4"] + schedule_overrides)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    schedule = Schedule(optimizer, cfg.schedule, cfg.optim.lr, epochs, steps_per_epoch)
    used = []
    for _ in range(epochs * steps_per_epoch):
        optimizer.step()
        schedule.after_step()
        used.append(schedule.lr_used)
    return used


def test_onecycle_peaks_at_peak_epoch_and_without_annihilation_ends_at_start():
    used = lrs_over(["schedule.peak_epoch=5", "schedule.div_factor=10"])
    peak_step = max(range(len(used)), key=used.__getitem__) + 1  # 1-based optimizer step
    assert peak_step == 5 * 10, "the peak is reached at the end of epoch 5 (step 5 x steps_per_epoch)"
    assert used[peak_step - 1] == pytest.approx(0.4)
    assert used[0] == pytest.approx(0.04)
    assert used[-1] == pytest.approx(0.04, rel=1e-3), "no annihilation: the cycle ends at lr_peak / div_factor"


def test_onecycle_with_final_div_factor_annihilates():
    used = lrs_over(["schedule.peak_epoch=5", "schedule.div_factor=10", "schedule.final_div_factor=100"])
    assert used[-1] == pytest.approx(0.4 / 10 / 100, rel=1e-2)


@pytest.mark.parametrize("forced", ["bf16", "fp32"])
def test_the_cpu_auto_precision_can_be_forced_for_trying_the_other_machine(monkeypatch, forced, tmp_path, capsys):
    """`precision: auto` on a CPU is measured (tests/test_precision_probe.py); the variable forces it."""
    monkeypatch.setenv("CIFARLAB_CPU_AUTO_PRECISION", forced)
    assert resolve_precision("auto", CPU).name == forced
    monkeypatch.setenv("CIFARLAB_CPU_AUTO_PRECISION", "fp16")
    assert main(["train", "smoke", f"output.dir={tmp_path}", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "CIFARLAB_CPU_AUTO_PRECISION must be bf16 or fp32" in err


def test_bf16_autocast_on_cpu_runs_matmuls_in_bf16():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        precision = resolve_precision("bf16", CPU)
    with precision.autocast():
        out = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert out.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------ GPU recipes on a CPU

# Best test accuracy of this case over seeds 0-6 (7 each; synthetic 16 px, 10 classes, chance 0.1), measured on
# an AMD EPYC without AVX512-BF16, torch 2.13: fast 0.88-1.00 fp32, 0.91-1.00 bf16; cifar10-quick 0.36-0.79 fp32,
# 0.33-0.87 bf16 (3 epochs of 8 steps is a noisy run). Each floor sits well below its lowest seed.
ACCURACY_FLOOR = {"fast": 0.7, "cifar10-quick": 0.2}


@pytest.mark.slow  # bf16 autocast is emulated (~10x slower) on a CPU without AVX512-BF16
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("recipe, model_options", [("fast", "{widths: [16, 32, 32]}"), ("cifar10-quick", "{width: 8}")])
def test_gpu_recipes_run_their_whole_path_on_a_cpu(recipe, model_options, precision, tmp_path):
    """fastnet + whitening, alternating flip, EMA, flip TTA: the parts the CIFAR recipes use, on small synthetic
    data, in both precisions whatever this CPU's `auto` would pick."""
    run = train(recipe, QUIET + [
        f"output.dir={tmp_path}", "data.dataset=synthetic",
        "data.options={num_train: 1024, num_test: 256, image_size: 16}", "train.epochs=3", "train.batch_size=128",
        f"model.options={model_options}", "checkpoint.every_epochs=100", f"train.precision={precision}"])
    assert run.summary["status"] == "completed" and run.summary["precision"] == precision
    assert run.best_test_acc > ACCURACY_FLOOR[recipe], f"{recipe} should learn easy synthetic data: {run.best_test_acc}"


def test_flip_tta_loss_stays_finite_for_confident_wrong_predictions():
    """Averaging softmaxes then taking log underflowed to log(0) = -inf; log-space averaging does not."""
    from cifarlab.data.loader import DeviceLoader
    from cifarlab.runtime import Precision
    from cifarlab.trainer.loop import evaluate

    class LeftOrRight(torch.nn.Module):  # class 0 if the left half is brighter, else 1; class 2 never
        def forward(self, x):
            left, right = x[..., : x.shape[-1] // 2].mean((1, 2, 3)), x[..., x.shape[-1] // 2:].mean((1, 2, 3))
            logits = torch.full((x.shape[0], 3), -1e4)
            logits[:, 0] = torch.where(left > right, 1e4, -1e4)
            logits[:, 1] = -logits[:, 0]
            return logits

    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    images[..., :4] = 255
    loader = DeviceLoader(images, torch.tensor([0, 1, 2, 2]), batch_size=4, device=torch.device("cpu"),
                          mean=(0.5,), std=(0.5,), train=False, channels_last=False)
    loss, acc = evaluate(LeftOrRight(), loader, Precision("fp32", "cpu"), tta=True)
    assert math.isfinite(loss)  # labels 2 get probability ~0 from both views: -inf before the fix
    assert acc == 0.25  # views disagree, classes 0 and 1 tie at 50% and argmax takes 0: only label 0 is right


def test_early_stop_ends_a_stalled_run_as_finished(tmp_path):
    """A learning rate too small to move the weights: no improvement, so the run stops after `patience` epochs."""
    from cifarlab import resume
    from cifarlab.errors import UserError

    run = train("smoke", QUIET + [f"output.dir={tmp_path}", "train.epochs=8", "optim.lr=1e-9",
                                  "schedule.name=constant", "train.early_stop_patience=2",
                                  "train.early_stop_min_delta=0.01"])
    assert run.summary["status"] == "completed" and run.summary["epochs_completed"] == 3
    assert run.summary["early_stop"] == {"epoch": 3, "best_epoch": 1,
                                         "reason": "no improvement in test_acc by more than 0.01 since epoch 1"}
    with pytest.raises(UserError, match="already finished"):
        resume(run.run_dir)
