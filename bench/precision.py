"""Every precision `auto` may pick: training images/s of every registered model on this machine, side by side.

Why it exists: `precision: auto` is chosen by a short probe of the run's own step (trainer/autotune.py,
about 3 s), because CPU flags cannot tell (docs/precision.md). This is the longer measurement the probe is
checked against: each candidate (CPU: fp32, bf16 autocast; CUDA: fp32 as TF32, bf16 autocast where the GPU
has it, fp16 autocast with a GradScaler) trains the same model on the same on-device batches (synthetic
3x32x32, the reference augmentation, SGD, channels_last) in a bare loop; runs alternate (fp32, bf16, ...,
fp32, bf16, ...) so a change in machine load hits all alike, and each ratio is the median of the paired
ratios against fp32. The last columns are what the probe picks for the same model and batch (measured
afresh, not from the cache), with its own ratio and time, and whether its pick trains within 15% of the
fastest candidate here (the issue's bar). Run it on the CPU or GPU you train on:

    python bench/precision.py                      # every model, batch 128
    python bench/precision.py --models convnet fastnet --steps 2 --repeats 3
    python bench/precision.py --models resnet18 --batch-size 128 --steps 30   # on a GPU: more steps a timing
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
from common import bare_epoch, bench_config, load, median_ratio, timed

from cifarlab.data.prepare import load_data
from cifarlab.models.registry import list_models
from cifarlab.runtime import make_runtime
from cifarlab.trainer.autotune import candidates, choose_precision
from cifarlab.trainer.build import build_state
from cifarlab.trainer.precision_cache import CACHE_ENV

WITHIN = 1.15  # the probe's pick must train at least 1/WITHIN as fast as the fastest candidate
CPU_FLAGS = ("avx512_bf16", "amx_tile", "amx_bf16")


def describe_machine() -> str:
    """CPU model, the bf16-related CPU flags, torch version and threads, load, and what `auto` picks."""
    cpu, flags = "unknown CPU", {}
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        flags = capabilities()
        cpu = flags.get("cpu_name") or cpu
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu} ({os.cpu_count()} cores)"
    flag_text = ", ".join(f"{name} {'yes' if flags.get(name) else 'no'}" for name in CPU_FLAGS)
    return (f"{where}; CPU flags: {flag_text}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"load average {load()}")


def model_states(model: str, args, run_dir: Path, precisions) -> dict:
    """One TrainState per precision, same model, data and batches."""
    states = {}
    for precision in precisions:
        cfg = bench_config(model, args.width, args.batch_size, args.steps,
                           extra=(f"train.precision={precision}", "train.device=auto"))
        runtime = make_runtime(cfg.train, cfg.seed)
        states[precision] = build_state(cfg, runtime, load_data(cfg.data), run_dir)
    return states


def measure(model: str, args, precisions) -> dict[str, list[float]]:
    """Images/s of each precision over `args.repeats` alternating rounds, after one warm-up epoch each."""
    with TemporaryDirectory() as tmp:
        states = model_states(model, args, Path(tmp), precisions)

        def rate(precision: str):
            state = states[precision]
            clock = timed if torch.cuda.is_available() else cpu_timed
            return lambda: clock(lambda: bare_epoch(state, state.objects.train_loader.batches(0)))

        for precision in precisions:
            rate(precision)()  # warm-up: oneDNN / cuDNN pick and cache their kernels on the first steps
        rates = {precision: [] for precision in precisions}
        for _ in range(args.repeats):
            for precision in precisions:
                rates[precision].append(rate(precision)())
        return rates


def cpu_timed(work) -> float:
    """Images per second of `work()` on a CPU, from the process's CPU seconds per thread: on a shared machine
    wall time counts the neighbours, CPU time (as `precision: auto`'s probe takes it) counts this work."""
    started = time.process_time()
    images = work()
    return images * torch.get_num_threads() / (time.process_time() - started)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    parser.add_argument("--width", type=int, default=16, help="convnet width")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="training steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds (fp32, bf16, ...) per model")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = candidates(device)
    print(describe_machine(), flush=True)
    per = "wall seconds" if device.type == "cuda" else "CPU seconds of the process per thread"
    print(f"bare training steps, batch {args.batch_size}, {args.steps} steps per timing, {args.repeats} rounds, "
          f"channels_last; images/s ({per}) as median (min-max); ratios: median of paired ratios to fp32\n")
    others = precisions[1:]
    print("| model | " + " | ".join(f"{p} img/s" for p in precisions) + " | "
          + " | ".join(f"{p} / fp32" for p in others) + " | fastest | auto's probe | pick within 15% |", flush=True)
    print("|---" * (len(precisions) + len(others) + 4) + "|", flush=True)
    results = {}
    for model in args.models or list_models():
        rates = measure(model, args, precisions)
        ratios = {p: median_ratio(rates[p], rates["fp32"]) for p in others}
        speed = {"fp32": 1.0, **ratios}
        fastest = max(speed, key=speed.get)
        probe = probe_choice(model, args)
        within = speed[probe.name] * WITHIN >= speed[fastest]
        results[model] = {**rates, **{f"{p}_over_fp32": r for p, r in ratios.items()}, "fastest": fastest,
                          "probe": probe.line(), "within": within}
        print(f"| {model} | " + " | ".join(_spread(rates[p]) for p in precisions) + " | "
              + " | ".join(f"{ratios[p]:.2f}x" for p in others)
              + f" | {fastest} | {probe.name}: {probe.reason} | {'yes' if within else 'NO'} |", flush=True)
    return results


def probe_choice(model: str, args):
    """What `precision: auto` picks for this model and batch, measured afresh (an empty cache folder)."""
    cfg = bench_config(model, args.width, args.batch_size, args.steps)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with TemporaryDirectory() as cache:
        previous, os.environ[CACHE_ENV] = os.environ.get(CACHE_ENV), cache
        try:
            return choose_precision(cfg.model, cfg.optim, (args.batch_size, 3, 32, 32), 10, device, True)
        finally:
            if previous is None:
                del os.environ[CACHE_ENV]
            else:
                os.environ[CACHE_ENV] = previous


def _spread(values: list[float]) -> str:
    """Median (min-max), three significant digits: an emulated bf16 step on a small CPU runs at ~1 img/s."""
    return f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
