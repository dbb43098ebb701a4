"""What the precision probe (trainer/autotune.py) assumes, measured: warm-up length and slice ratios.

1. Warm-up: the CPU seconds of each of the first `--steps` training steps of a fresh model, per precision
   (oneDNN creates and caches its primitives on the first steps of a shape; bf16's AMX kernels were seen to
   need more than one). The probe warms a candidate until two consecutive steps agree (WARMUP_AGREE).
2. Slices (`--slices`): steady seconds per image at the run's batch and at smaller slices of it, per precision, and the
   bf16/fp32 ratio at each. The probe times a slice of the batch when a full step would not fit its budget;
   that is sound only where the ratio at the slice is the ratio at the batch.
3. `--recipes`: the probe itself (measured afresh, no cache) at each built-in recipe's model and batch shape:
   its pick, ratio, the images it timed a step, and the CPU and wall seconds it spent (budget: 3 s).

    OMP_NUM_THREADS=1 python bench/probe_warmup.py --models convnet:8:256:1:28 fastnet::512:1:28
"""
from __future__ import annotations

import argparse
import time

import torch
from common import load

from cifarlab.config import load_config
from cifarlab.models.registry import build_model
from cifarlab.runtime import Precision
from cifarlab.trainer.autotune import make_step
from cifarlab.trainer.optim import build_optimizer

PRECISIONS = ("fp32", "bf16")


def fresh_step(name: str, width: str, precision: str, shape: tuple[int, int, int, int]):
    options = {"width": int(width)} if width else {}
    cfg = load_config("smoke", [f"model.name={name}", f"model.options={options}"])
    N, C, H, W = shape
    model = build_model(cfg.model, 10, C).train().to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    inputs = torch.randn(N, C, H, W).contiguous(memory_format=torch.channels_last)
    return make_step(model, optimizer, Precision(precision, "cpu"), inputs, torch.randint(0, 10, (N,)))


def curve(step, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        begin = time.process_time()
        step()
        times.append(time.process_time() - begin)
    return times


def probe_recipes(names: list[str]) -> None:
    from cifarlab.recipe_files import list_recipes
    from cifarlab.trainer.autotune import candidates, measure_precisions
    from cifarlab.trainer.step_race import decide, speedups

    cpu = torch.device("cpu")
    for recipe in names or [name for name in list_recipes() if name not in ("folder", "smoke")]:
        cfg = load_config(recipe, [])
        C, size = (1, 28) if cfg.data.dataset in ("fashion_mnist", "mnist") else (3, 32)
        shape, order = (cfg.train.batch_size, C, size, size), candidates(cpu)
        begin = time.process_time()
        timings = measure_precisions(cfg.model, cfg.optim, shape, 10, cpu, True, order)
        ratio = speedups(timings.seconds_per_step, "fp32")["bf16"]
        print(f"{recipe} ({cfg.model.name}, batch {shape[0]}): {decide(timings.seconds_per_step, order)}, bf16 "
              f"{ratio:.2f}x fp32, timing {timings.batch} images a step, {time.process_time() - begin:.1f} CPU s, "
              f"{timings.wall_seconds:.1f} s wall", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["convnet:8:256:1:28"],
                        metavar="NAME:WIDTH:BATCH:CHANNELS:SIZE")
    parser.add_argument("--steps", type=int, default=10, help="steps of the warm-up curve")
    parser.add_argument("--slices", type=int, nargs="*", default=[], help="slice sizes to compare with the batch")
    parser.add_argument("--repeats", type=int, default=3, help="steady steps per slice (the fastest is kept)")
    parser.add_argument("--recipes", nargs="*", help="run the probe for these recipes (none named: every one)")
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}, load {load()}", flush=True)
    if args.recipes is not None:
        probe_recipes(args.recipes)
        return
    for spec in args.models:
        name, width, batch, channels, size = spec.split(":")
        shape = (int(batch), int(channels), int(size), int(size))
        for precision in PRECISIONS:
            times = curve(fresh_step(name, width, precision, shape), args.steps)
            print(f"{spec} {precision} warm-up CPU s/step: {' '.join(f'{t:.3f}' for t in times)}", flush=True)
        per_image = {}
        for n in [shape[0], *args.slices]:
            for precision in PRECISIONS:
                step = fresh_step(name, width, precision, (n, *shape[1:]))
                curve(step, 3)  # warm
                per_image[(n, precision)] = min(curve(step, args.repeats)) / n
            print(f"{spec} slice {n}: fp32 {1e3 * per_image[(n, 'fp32')]:.3f} ms/img, bf16 "
                  f"{1e3 * per_image[(n, 'bf16')]:.3f} ms/img, bf16/fp32 speed "
                  f"{per_image[(n, 'fp32')] / per_image[(n, 'bf16')]:.2f}x", flush=True)
        print(f"load {load()}", flush=True)


if __name__ == "__main__":
    main()
