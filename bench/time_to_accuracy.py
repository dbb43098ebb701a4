"""Time to accuracy on real Fashion-MNIST: each recipe over several seeds, side by side with the reference way.

For each recipe and seed: final test accuracy, training seconds (the run summary's `train_seconds`: the
loop's wall time, evaluation excluded), the process's CPU seconds for the whole run (data, evaluation and
the precision probe included; on a shared machine the wall clock counts other processes' turns, CPU time
does not), images/s and MFU (the fraction of the probed matmul peak, as on the epoch lines).

`--reference` also trains each recipe's model the way the reference experiments did, for the same wall
budget (the recipe's mean training seconds measured in this run): numpy images, albumentations per image
in a `DataLoader` worker (pad + random crop, horizontal flip, normalise), a plain fp32 loop with torch's
OneCycleLR planned over the steps that fit the budget at the rate of its first steps, no TTA.

Every summary line names the CPU (model and its bf16/AMX flags) it was measured on.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import torch
import torch.nn.functional as F

from cifarlab.config import load_config
from cifarlab.data.prepare import load_data
from cifarlab.experiment import train
from cifarlab.models.inference import evaluate
from cifarlab.runtime import make_runtime
from cifarlab.trainer.build import build_state
from cifarlab.trainer.optim import build_optimizer
from cifarlab.trainer.throughput import peak_flops

TARGETS = {"fmnist-quick": (0.92, 300), "fmnist-fast": (0.94, 240), "fmnist-95": (0.95, 900)}
FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_name() -> str:
    """'Intel(R) Xeon(R) Processor (avx512_bf16 amx_bf16)': the model name and which bf16 flags it has."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    have = [flag for flag in FLAGS if flag in flags] or ["no avx512_bf16, no amx"]
    return f"{model} ({' '.join(have)})"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_recipe(recipe: str, seed: int, out_dir: str, extra: list[str]) -> dict:
    overrides = [f"seed={seed}", f"output.dir={out_dir}", "output.report=false", "output.tensorboard=false",
                 "output.progress=none", *extra]
    started = cpu_seconds()
    summary = train(recipe, overrides).summary.to_json()  # this benchmark's record: summary.json's keys
    summary["cpu_seconds"] = cpu_seconds() - started
    if summary["status"] != "completed":  # an interrupted (SIGTERM) or diverged run is no time-to-accuracy figure
        raise SystemExit(f"{recipe} seed {seed}: the run ended {summary['status']}; no figure reported")
    return summary


class AlbumentationsDataset(torch.utils.data.Dataset):
    """The reference pipeline for 1- or 3-channel images: one Python call chain per image."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, padding: int, flip_p: float, mean, std):
        import albumentations as A
        import cv2

        H = images_hwc.shape[1]
        self.images, self.labels = images_hwc, labels
        self.transform = A.Compose([
            A.PadIfNeeded(min_height=H + 2 * padding, min_width=H + 2 * padding, border_mode=cv2.BORDER_CONSTANT,
                          fill=0),
            A.RandomCrop(H, H), A.HorizontalFlip(p=flip_p), A.Normalize(mean=mean, std=std),
        ])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.transform(image=self.images[i])["image"]
        if image.ndim == 2:  # cv2 drops a single channel
            image = image[:, :, None]
        return torch.from_numpy(image.transpose(2, 0, 1).copy()), int(self.labels[i])


def reference_loader(cfg, dataset, workers: int) -> torch.utils.data.DataLoader:
    images_hwc = dataset.train.images.permute(0, 2, 3, 1).numpy().copy()
    crop, flip = cfg.augment.crop, cfg.augment.flip
    data = AlbumentationsDataset(images_hwc, dataset.train.labels.numpy(), crop.padding if crop else 0,
                                 flip.p if flip else 0.0, dataset.mean, dataset.std)
    return torch.utils.data.DataLoader(data, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                                       num_workers=workers, persistent_workers=workers > 0)


def run_reference(recipe: str, seed: int, budget_seconds: float, extra: list[str], workers: int) -> dict:
    """The recipe's model, optimizer and loss trained the reference way for `budget_seconds` of wall time."""
    cfg = load_config(recipe, [f"seed={seed}", *extra, "train.precision=fp32", "train.compile=null",
                               "train.channels_last=false"])
    runtime = make_runtime(cfg.train, cfg.seed)
    dataset = load_data(cfg.data, cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        state = build_state(cfg, runtime, dataset, Path(tmp))  # the model as the recipe builds it (whitening)
    model = state.objects.model.to(memory_format=torch.contiguous_format)  # plain NCHW, as the references
    optimizer = build_optimizer(model, cfg.optim)  # the recipe's parameter groups, lr, momentum, weight decay
    images, seconds = train_reference(model, optimizer, reference_loader(cfg, dataset, workers), cfg, budget_seconds)
    _, accuracy = evaluate(model, state.objects.test_loader, runtime.precision)
    return {"final_test_acc": accuracy, "train_seconds": seconds, "train_images_per_second": images / seconds}


def train_reference(model, optimizer, loader, cfg, budget_seconds: float, probe_steps: int = 60,
                    warmup_steps: int = 10) -> tuple[int, float]:
    """A plain loop: the rate of steps `warmup_steps`..`probe_steps` (the first ones wait for the DataLoader's
    worker to start, which would plan too few steps) at the one-cycle's starting lr plans the schedule over
    the steps that fit in the rest of the budget. Returns (images trained, wall seconds).

    Fifty steps (about 8 s at 2 threads): over steps 2..20, three runs of a 251 s budget trained 184, 230 and
    292 s on an AMD EPYC (Zen 3), the worker and the loop sharing two cores unevenly at the start."""
    sched = cfg.schedule
    peaks = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:  # the probe steps run at the one-cycle's starting lr
        group["lr"] /= sched.div_factor
    model.train()
    started, images, steps, scheduler, total = time.perf_counter(), 0, 0, None, None
    while total is None or steps < total:
        for inputs, labels in loader:
            loss = F.cross_entropy(model(inputs), labels, label_smoothing=cfg.optim.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            images, steps = images + len(labels), steps + 1
            if scheduler is not None:
                scheduler.step()
            if steps == warmup_steps:
                rate_from = time.perf_counter()
            if steps == probe_steps:
                now = time.perf_counter()
                rate = (steps - warmup_steps) / (now - rate_from)
                total = max(steps + 1, steps + int((budget_seconds - (now - started)) * rate))
                scheduler = torch.optim.lr_scheduler.OneCycleLR(
                    optimizer, max_lr=peaks, total_steps=total - steps, pct_start=sched.pct_start,
                    div_factor=sched.div_factor, final_div_factor=sched.final_div_factor or 1e4,
                    anneal_strategy=sched.anneal, cycle_momentum=False)
            if total is not None and steps >= total:
                break
    return images, time.perf_counter() - started


def stats(values: list[float], fmt: str = ".2f") -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return (f"{statistics.mean(values):{fmt}} ± {sd:{fmt}} (min {min(values):{fmt}}, max {max(values):{fmt}}, "
            f"n={len(values)})")


def describe(recipe: str, runs: list[dict], cpu: str) -> str:
    target_acc, target_s = TARGETS.get(recipe, (None, None))
    goal = f" (target {100 * target_acc:.0f}% in {target_s / 60:.0f} min)" if target_acc else ""
    mfus = [r["mfu"] for r in runs if r.get("mfu")]
    mfu = f"; MFU {100 * statistics.mean(mfus):.0f}% of the probed peak" if mfus else ""
    return (f"{recipe}{goal} on {cpu}, {runs[0].get('precision')}:\n"
            f"  final test accuracy {stats([100 * r['final_test_acc'] for r in runs])} %\n"
            f"  training {stats([r['train_seconds'] for r in runs], '.0f')} s wall; process CPU "
            f"{stats([r['cpu_seconds'] for r in runs], '.0f')} s; "
            f"{statistics.mean(r['train_images_per_second'] for r in runs):.0f} img/s{mfu}")


def describe_reference(recipe: str, runs: list[dict], recipe_runs: list[dict], cpu: str) -> str:
    flops = recipe_runs[0].get("train_flops_per_image") if recipe_runs else None
    peak, _ = peak_flops(torch.device("cpu"), "fp32")
    rate = statistics.mean(r["train_images_per_second"] for r in runs)
    mfu = f"; MFU {100 * flops * rate / peak:.0f}% of the fp32 probed peak" if flops else ""
    return (f"{recipe}, the reference way (DataLoader + albumentations, fp32, no TTA), same budget, on {cpu}:\n"
            f"  final test accuracy {stats([100 * r['final_test_acc'] for r in runs])} %\n"
            f"  training {stats([r['train_seconds'] for r in runs], '.0f')} s wall; {rate:.0f} img/s{mfu}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=list(TARGETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    parser.add_argument("--reference", action="store_true",
                        help="also train each recipe's model the reference way for the same budget")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of the reference way")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="train only the reference way, for this many seconds (no recipe runs)")
    args = parser.parse_args(argv)
    cpu = cpu_name()
    print(f"machine: {common.machine()}", flush=True)
    results, lines = {}, []
    with tempfile.TemporaryDirectory() as out_dir:
        for recipe in args.recipes:
            runs = [] if args.budget else [report_run(recipe, seed, run_recipe(recipe, seed, out_dir, args.set))
                                           for seed in args.seeds]
            results[recipe] = {"runs": runs}
            if runs:
                lines.append(describe(recipe, runs, cpu))
            if args.reference or args.budget:
                budget = args.budget or statistics.mean(r["train_seconds"] for r in runs)
                reference = [report_run(f"{recipe} (reference way)", seed,
                                        run_reference(recipe, seed, budget, args.set, args.workers))
                             for seed in args.seeds]
                results[recipe]["reference"] = reference
                lines.append(describe_reference(recipe, reference, runs, cpu))
            print(lines[-1], flush=True)
    print(f"\nside by side (load average at the end: {common.load()}):\n" + "\n".join(lines), flush=True)
    return results


def report_run(what: str, seed: int, run: dict) -> dict:
    cpu = f", CPU {run['cpu_seconds']:.0f} s" if "cpu_seconds" in run else ""
    print(f"  {what} seed {seed}: final {100 * run['final_test_acc']:.2f}%, train {run['train_seconds']:.0f} s"
          f"{cpu}, {run['train_images_per_second']:.0f} img/s", flush=True)
    return run


if __name__ == "__main__":
    main()
