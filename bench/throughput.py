"""Training images/s: cifarlab's on-device pipeline vs the reference experiments' DataLoader + albumentations.

The reference way (experiments 002/003): numpy HWC uint8 images, a torch Dataset applying albumentations
per image (PadIfNeeded + RandomCrop, HorizontalFlip, CoarseDropout, Normalize), a DataLoader with worker
processes, and a plain fp32 loop. Both sides train the same model at the same batch size on the same
3x32x32 images for a fixed number of steps after warm-up; runs alternate (cifarlab, reference, ...) so a
change in machine load hits both.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch
import torch.nn.functional as F
from common import bench_config, median_ratio, paired, spread, timed

from cifarlab.data.prepare import load_data
from cifarlab.runtime import make_runtime
from cifarlab.trainer.build import build_state, default_callbacks
from cifarlab.trainer.loop import train_epoch

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


class AlbumentationsDataset(torch.utils.data.Dataset):
    """The reference pipeline: one Python call chain per image."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray):
        import albumentations as A
        import cv2

        self.images, self.labels = images_hwc, labels
        self.transform = A.Compose([
            A.PadIfNeeded(min_height=40, min_width=40, border_mode=cv2.BORDER_CONSTANT, fill=0),
            A.RandomCrop(32, 32),
            A.HorizontalFlip(p=0.5),
            A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(8, 8), hole_width_range=(8, 8), p=1.0),
            A.Normalize(mean=MEAN, std=STD),
        ])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.transform(image=self.images[i])["image"]
        return torch.from_numpy(image.transpose(2, 0, 1).copy()), int(self.labels[i])


def reference_epoch(model, optimizer, loader, warmup_steps: int) -> float:
    """Images/s of one pass over `loader`, timing the steps after the first `warmup_steps`."""
    model.train()
    images, started = 0, None
    for k, (inputs, labels) in enumerate(loader):
        if k == warmup_steps:
            started = time.perf_counter()
        loss = F.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if started is not None:
            images += labels.shape[0]
    return images / (time.perf_counter() - started)


def make_reference(state, workers: int, warmup_steps: int):
    """A fresh copy of the model (plain NCHW, as the references) and a persistent-worker DataLoader."""
    split = state.objects.train_loader
    images_hwc = split.images.cpu().permute(0, 2, 3, 1).numpy().copy()
    dataset = AlbumentationsDataset(images_hwc, split.labels.cpu().numpy())
    loader = torch.utils.data.DataLoader(dataset, batch_size=split.batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    model = copy.deepcopy(state.objects.model).to(memory_format=torch.contiguous_format)
    cfg = state.cfg.optim
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                weight_decay=cfg.weight_decay)
    return lambda: reference_epoch(model, optimizer, loader, warmup_steps)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--width", type=int, default=16, help="convnet width")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=16, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each reference run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="reference workers to try")
    parser.add_argument("--only", choices=["cifarlab", "reference"],
                        help="train one side once (reference: with the first --workers) and exit, "
                             "for timing whole processes")
    args = parser.parse_args(argv)

    cfg = bench_config(args.model, args.width, args.batch_size, args.steps + args.warmup)
    runtime = make_runtime(cfg.train, cfg.seed)
    dataset = load_data(cfg.data)
    with TemporaryDirectory() as tmp:
        state = build_state(cfg, runtime, dataset, Path(tmp))
        callbacks = default_callbacks(cfg, Path(tmp), is_main=False)
        steps = len(state.objects.train_loader)

        def cifarlab_run() -> float:
            # The whole pass is timed, its start included (the reference skips its warm-up steps).
            state.progress.batch_in_epoch = 0
            return timed(lambda: train_epoch(state, callbacks) or steps * args.batch_size)

        if args.only == "reference":
            rate = make_reference(state, args.workers[0], args.warmup)()
            print(f"reference ({args.workers[0]} workers): {rate:.0f} img/s")
            return {"reference": [rate]}
        if args.only == "cifarlab":  # one pass, the same work as the reference's one pass
            rate = cifarlab_run()
            print(f"cifarlab: {rate:.0f} img/s")
            return {"cifarlab": [rate]}
        cifarlab_run()  # warm-up: allocator, oneDNN primitive caches
        rates = {}
        for workers in args.workers:
            run = make_reference(state, workers, args.warmup)
            run()  # starts the workers, warms the caches
            rates[workers] = (run(), run)
            print(f"  reference, {workers} workers: {rates[workers][0]:.0f} img/s", flush=True)
        best_workers = max(rates, key=lambda w: rates[w][0])
        ours, theirs = paired(cifarlab_run, rates[best_workers][1], args.repeats)
    ratio = median_ratio(ours, theirs)
    print(f"throughput, {args.model} width {args.width}, batch {args.batch_size}, 3x32x32, fp32, "
          f"{args.steps} timed steps x {args.repeats} pairs:\n"
          f"  cifarlab (DeviceLoader, batched augment): {spread(ours)} img/s\n"
          f"  reference (DataLoader + albumentations, {best_workers} workers): {spread(theirs)} img/s\n"
          f"  ratio cifarlab / reference: {ratio:.2f}x (median of paired ratios; target >= 3x)", flush=True)
    return {"cifarlab": ours, "reference": theirs, "workers": best_workers, "ratio": ratio}


if __name__ == "__main__":
    main()
