"""What each augmentation adds to the loader's batch, and what gradient accumulation adds to a step.

Per training batch of CIFAR-shaped uint8 images on the device, made by `DeviceLoader.make_batch` (gather,
to float, augment, mix, normalise, channels_last), with one op on at a time and then recipe-like stacks:
launches (on a GPU cudaLaunchKernel; on a CPU top-level aten ops that compute, views excluded, counted as
in gpu_speed.py), host syncs (must be 0), host ms and, on a GPU, GPU ms per batch, images/s (median of the
paired runs). "+launches" is the
difference to the bare loader (no augmentation); "time × none" the median of paired wall-time ratios to it
(runs alternate, so a change in machine load hits both). MixUp/CutMix draw their lambda and box on the host, so
their kernels are the blend or the box copy plus the one-hot targets; with both at p 0.5 the figure is the
mean over batches. Then the loss's forward and backward with class indices vs mixed (probability) targets,
and the launches of a training step with `train.accumulate` 1 vs 4 at the same images per optimizer step.

    python bench/augment_cost.py                # batch 512 (CPU: 1 thread unless --threads)
    python bench/augment_cost.py --smoke        # CI: batch 32, a few batches
    python bench/augment_cost.py --only trivial rand erasing   # those variants and the bare loader
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as run_all.py: before torch loads OpenMP

import argparse  # noqa: E402
import statistics  # noqa: E402
from pathlib import Path  # noqa: E402
from tempfile import TemporaryDirectory  # noqa: E402

import torch  # noqa: E402
from common import machine, median_ratio, paired, timed  # noqa: E402
from gpu_speed import per_step  # noqa: E402
from torch import nn  # noqa: E402

from cifarlab.config import AugmentConfig, load_config  # noqa: E402
from cifarlab.data.augment import build_augment  # noqa: E402
from cifarlab.data.loader import DeviceLoader  # noqa: E402
from cifarlab.data.mix import build_mix  # noqa: E402
from cifarlab.experiment import build_state, load_data  # noqa: E402
from cifarlab.runtime import make_runtime  # noqa: E402
from cifarlab.trainer.loop import train_step  # noqa: E402

CLASSES, SIZE = 10, 32
# label -> the augment section (as YAML overrides of `augment`); each row is measured alone.
VARIANTS = {
    "none (gather, float, normalise)": {},
    "crop 4 + flip": {"crop": {"padding": 4}, "flip": {}},
    "color (b, c, s 0.4)": {"color": {}},
    "color, p 0.5": {"color": {"p": 0.5}},
    "cutout 1 x 16": {"cutout": {"size": 16}},
    "trivialaugment (wide)": {"trivialaugment": {}},
    "randaugment 2 ops, magnitude 9": {"randaugment": {}},
    "random erasing, p 0.5": {"erase": {}},
    "crop 4 + flip + trivialaugment + erasing": {"crop": {"padding": 4}, "flip": {}, "trivialaugment": {},
                                                 "erase": {"p": 0.25}},
    "mixup": {"mixup": {}},
    "cutmix": {"cutmix": {}},
    "mixup + cutmix, p 0.5 each": {"mixup": {"p": 0.5}, "cutmix": {"p": 0.5}},
    "crop + flip + color + cutout + mixup/cutmix": {"crop": {"padding": 4}, "flip": {}, "color": {},
                                                   "cutout": {"size": 16}, "mixup": {"p": 0.5},
                                                   "cutmix": {"p": 0.5}},
}


def make_loader(section: dict, batch_size: int, device: torch.device) -> DeviceLoader:
    cfg = AugmentConfig.model_validate(section)
    images = torch.randint(0, 256, (4 * batch_size, 3, SIZE, SIZE), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    return DeviceLoader(images, torch.arange(len(images)) % CLASSES, batch_size=batch_size, device=device,
                        mean=(0.5,) * 3, std=(0.25,) * 3, train=True, augment=build_augment(cfg, SIZE, 3),
                        mix=build_mix(cfg.mixup, cfg.cutmix, CLASSES))


def batch_work(section: dict, batch_size: int, batches: int, device: torch.device):
    """`work()` makes `batches` training batches with this augment section and returns the images made."""
    loader = make_loader(section, batch_size, device)
    indices = loader.permutation(1)[:batch_size]

    def work() -> int:
        for k in range(batches):
            loader.make_batch(indices, epoch=1, batch_index=k)
        return batches * batch_size

    work()  # warm-up: cached index tables, allocator
    return work


def loss_cost(batch_size: int, device: torch.device) -> dict[str, float]:
    """Launches of CrossEntropyLoss forward + backward with class indices vs probability targets."""
    logits = torch.randn(batch_size, CLASSES, device=device, requires_grad=True)
    labels = torch.arange(batch_size, device=device) % CLASSES
    targets = torch.nn.functional.one_hot(labels, CLASSES).float()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    cuda = device.type == "cuda"
    return {kind: per_step(lambda: loss_fn(logits, y).backward(), 1, cuda)["launches"]
            for kind, y in (("indices", labels), ("mixed targets", targets))}


def step_cost(accumulate: int, images: int, steps: int, device: torch.device, run_dir: Path) -> dict[str, float]:
    """Launches and host ms per optimizer step of `smoke`'s convnet (width 8) at `images` per step."""
    cfg = load_config("smoke", ["data.options={num_train: %d, num_test: 64, image_size: 32}" % (images * steps),
                                f"train.batch_size={images // accumulate}", f"train.accumulate={accumulate}",
                                f"train.device={device.type}", "output.report=false", "output.tensorboard=false",
                                "output.progress=none", "augment.crop=null", "augment.flip=null"])
    state = build_state(cfg, make_runtime(cfg.train, cfg.seed), load_data(cfg.data), run_dir)
    state.objects.train_model.train()
    batches = list(state.objects.train_loader.batches(0))

    def work():
        for inputs, labels in batches:
            train_step(state, inputs, labels)
        state.objects.metrics.flush()

    work()  # lazy optimizer state
    return per_step(work, len(batches), device.type == "cuda")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--batches", type=int, default=8, help="batches per measurement (mixing varies by batch)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--repeats", type=int, default=5, help="paired timings per variant")
    parser.add_argument("--smoke", action="store_true", help="batch 32, 2 batches (CI)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="measure only the variants whose label contains one of these words (and none)")
    args = parser.parse_args(argv)
    batch, batches, repeats = (32, 2, 1) if args.smoke else (args.batch, args.batches, args.repeats)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {machine()}\ndevice: {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s); batch {batch} of 3x{SIZE}x{SIZE}, "
          f"{batches} batches per figure", flush=True)
    print("| augment | launches/batch | +launches | syncs/batch | host ms/batch | GPU ms/batch | images/s | "
          "time × none |\n|---|---|---|---|---|---|---|---|")
    cuda, base, base_work = device.type == "cuda", None, None
    chosen = [label for k, label in enumerate(VARIANTS)
              if k == 0 or args.only is None or any(word in label for word in args.only)]
    for label in chosen:
        section = VARIANTS[label]
        work = batch_work(section, batch, batches, device)
        cost = per_step(work, batches, cuda)
        base, base_work = (cost["launches"], work) if base is None else (base, base_work)
        variant_rates, base_rates = paired(lambda: timed(work), lambda: timed(base_work), repeats)
        ratio = median_ratio(base_rates, variant_rates)  # images/s of none / of this: its time / none's
        gpu = "–" if cost["gpu_ms"] != cost["gpu_ms"] else f"{cost['gpu_ms']:.3f}"
        print(f"| {label} | {cost['launches']:.1f} | {cost['launches'] - base:+.1f} | {cost['syncs']:.0f} | "
              f"{cost['host_ms']:.2f} | {gpu} | {statistics.median(variant_rates):,.0f} | {ratio:.2f} |", flush=True)
    losses = loss_cost(batch, device)
    print(f"\nloss forward+backward launches: class indices {losses['indices']:.0f}, "
          f"mixed targets {losses['mixed targets']:.0f}")
    with TemporaryDirectory() as tmp:
        images = 4 * (batch // 4)
        steps = {k: step_cost(k, images, 2 if args.smoke else 3, device, Path(tmp)) for k in (1, 4)}
    print(f"training step launches at {images} images per optimizer step (convnet width 8): "
          f"accumulate 1: {steps[1]['launches']:.0f}, accumulate 4: {steps[4]['launches']:.0f} "
          f"({steps[4]['launches'] / steps[1]['launches']:.2f}x); host ms per step "
          f"{steps[1]['host_ms']:.1f} and {steps[4]['host_ms']:.1f}")


if __name__ == "__main__":
    main()
