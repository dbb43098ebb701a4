"""Shared helpers for the hand-run benchmarks: machine description, timing, small configs."""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch

try:
    import cifarlab  # noqa: F401  (installed by `make bench`)
except ModuleNotFoundError:  # run by hand from a checkout
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

from cifarlab.config import load_config
from cifarlab.trainer.precision_cache import device_identity


def machine() -> str:
    """One line: CPU model, cores torch uses, whether bf16 is fast, OpenMP's wait policy (idle threads spin or
    sleep: a 1.1-1.3x difference on some CPUs, bench/README.md) and the load average at the time."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{gpu}, CPU flags: {_bf16_flags()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
            f"load average {load()}")


def _bf16_flags() -> str:
    """The flags that bear on bf16 speed (which does not follow from them: docs/precision.md)."""
    flags = set(device_identity(torch.device("cpu"))["flags"])
    return ", ".join(f"{name} {'yes' if name in flags else 'no'}" for name in ("avx512_bf16", "amx_bf16"))


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def timed(work: Callable[[], int]) -> float:
    """Images per second of `work()`, which returns how many images it processed."""
    sync()
    started = time.perf_counter()
    images = work()
    sync()
    return images / (time.perf_counter() - started)


def bare_epoch(state, batches) -> int:
    """The minimum, as anyone would write it: forward, loss, backward, step over `batches` (no schedule,
    metrics, EMA, callbacks or syncs; under fp16 the run's GradScaler step, without which nobody trains in
    fp16); returns the images it trained on."""
    objects, precision = state.objects, state.runtime.precision
    model, optimizer, loss_fn = objects.train_model, objects.optimizer, objects.loss_fn
    scaled = objects.grad_step if precision.name == "fp16" else None
    model.train()
    images = 0
    for inputs, labels in batches:
        with precision.autocast():
            loss = loss_fn(model(inputs), labels)
        if scaled is not None:
            scaled(loss)
        else:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        images += labels.shape[0]
    return images


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def paired(a: Callable[[], float], b: Callable[[], float], repeats: int) -> tuple[list[float], list[float]]:
    """Run a and b in turn `repeats` times (a b a b ...): drift in machine load hits both alike."""
    results_a, results_b = [], []
    for _ in range(repeats):
        results_a.append(a())
        results_b.append(b())
    return results_a, results_b


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.0f} (min {min(values):.0f}, max {max(values):.0f})"


def bench_config(model: str, width: int, batch_size: int, steps: int, image_size: int = 32, channels: int = 3,
                 extra: tuple[str, ...] = ()):
    """A synthetic-data config whose training split is exactly `steps` batches, with the reference augmentation."""
    overrides = [
        "data.dataset=synthetic",
        f"data.options={{num_train: {steps * batch_size}, num_test: {batch_size}, "
        f"image_size: {image_size}, channels: {channels}}}",
        "augment.crop={padding: 4, pad_mode: zero}", "augment.flip={p: 0.5}", "augment.cutout={holes: 1, size: 8}",
        f"model.name={model}", "optim.name=sgd", "optim.lr=0.01", "optim.momentum=0.9", "optim.nesterov=true",
        "optim.weight_decay=5e-4", "schedule.name=cosine", f"train.batch_size={batch_size}",
        f"train.eval_batch_size={batch_size}", "train.epochs=1", "train.precision=fp32",
        f"train.log_every_steps={max(1, steps // 4)}", "output.tensorboard=false", "output.report=false",
        "output.progress=none",
    ]
    if model == "convnet":
        overrides.append(f"model.options={{width: {width}}}")
    return load_config(None, overrides + list(extra))
