"""fp32 vs bf16 autocast: training images/s of every registered model on this machine, side by side.

Why it exists: `precision: auto` is chosen by a short probe of the run's own step (trainer/autotune.py,
about 3 s), because CPU flags cannot tell (docs/precision.md). This is the longer measurement the probe is
checked against: both precisions train the same model on the same on-device batches (synthetic 3x32x32,
the reference augmentation, SGD, channels_last) in a bare loop; runs alternate (fp32, bf16, fp32, ...) so
a change in machine load hits both, and the ratio is the median of the paired ratios. The last column is
what the probe picks for the same model and batch (measured afresh, not from the cache), with its own
ratio and time. Run it on the CPU or GPU you train on:

    python bench/precision.py                      # every model, batch 128
    python bench/precision.py --models convnet fastnet --steps 2 --repeats 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
from common import bare_epoch, bench_config, load, median_ratio, paired, timed

from cifarlab.data.prepare import load_data
from cifarlab.models.registry import list_models
from cifarlab.runtime import make_runtime
from cifarlab.trainer.autotune import choose_precision
from cifarlab.trainer.build import build_state
from cifarlab.trainer.precision_cache import CACHE_ENV

PRECISIONS = ("fp32", "bf16")
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


def model_states(model: str, args, run_dir: Path) -> dict:
    """One TrainState per precision, same model, data and batches."""
    states = {}
    for precision in PRECISIONS:
        cfg = bench_config(model, args.width, args.batch_size, args.steps,
                           extra=(f"train.precision={precision}", "train.device=auto"))
        runtime = make_runtime(cfg.train, cfg.seed)
        states[precision] = build_state(cfg, runtime, load_data(cfg.data), run_dir)
    return states


def measure(model: str, args) -> tuple[list[float], list[float]]:
    """(fp32 images/s, bf16 images/s) over `args.repeats` alternating pairs, after one warm-up epoch each."""
    with TemporaryDirectory() as tmp:
        states = model_states(model, args, Path(tmp))

        def rate(precision: str):
            state = states[precision]
            clock = timed if torch.cuda.is_available() else cpu_timed
            return lambda: clock(lambda: bare_epoch(state, state.objects.train_loader.batches(0)))

        for precision in PRECISIONS:
            rate(precision)()  # warm-up: oneDNN picks and caches its kernels on the first steps
        return paired(rate("fp32"), rate("bf16"), args.repeats)


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
    parser.add_argument("--repeats", type=int, default=3, help="alternating (fp32, bf16) pairs per model")
    args = parser.parse_args(argv)

    print(describe_machine(), flush=True)
    per = "wall seconds" if torch.cuda.is_available() else "CPU seconds of the process per thread"
    print(f"bare training steps, batch {args.batch_size}, {args.steps} steps per timing, {args.repeats} pairs, "
          f"channels_last; images/s ({per}) as median (min-max)\n")
    print("| model | fp32 img/s | bf16 img/s | bf16 / fp32 | auto's probe |\n|---|---|---|---|---|", flush=True)
    results = {}
    for model in args.models or list_models():
        fp32, bf16 = measure(model, args)
        ratio = median_ratio(bf16, fp32)
        probe = probe_choice(model, args)
        results[model] = {"fp32": fp32, "bf16": bf16, "bf16_over_fp32": ratio, "probe": probe.line()}
        print(f"| {model} | {_spread(fp32)} | {_spread(bf16)} | {ratio:.2f}x | {probe.name}: {probe.reason} |",
              flush=True)
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
