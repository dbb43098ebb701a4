"""GPU speed (issue 10): cifarlab's `fit` vs a bare hand-written loop, with launches and syncs per step.

For each model, in one process, on synthetic CIFAR-shaped data (3x32x32 uint8 on the device):
- `fit`: the model's own recipe (its augmentation, EMA, schedule, metrics, callbacks, one-batch
  evaluation and checkpoint at the epoch end) for one epoch of `--steps` steps;
- bare: forward, loss, backward, optimizer step over the same model and the same epoch's batches, made
  by the loader once beforehand (no augmentation, callbacks or syncs inside the timed loop).
Runs alternate (bare, fit, ...); images/s are medians and the ratio is the median of the paired ratios.
Per step (training steps only, from one profiled epoch of each): host ms (CPU: wall time; GPU: wall time
less the time blocked in synchronising calls), GPU ms (kernel time), launches (cudaLaunchKernel; on a CPU: top-level
aten ops that compute, views excluded), syncs (cudaStream/Device/EventSynchronize; on a CPU: the calls
`cifarlab.trainer.syncs.SyncCounter` sees) and copies (cudaMemcpy*, GPU only).

On a CUDA device: fast (batch 1024), custom_resnet (512), resnet18 (128), the sizes of issue 10. Without
one: small models on the CPU. `--smoke` runs a few steps of each (CI). `--compile MODE` compiles the model
for both loops (`train.compile`; the warm-up epoch absorbs the compiling), `--only LABEL ...` picks cases.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as run_all.py: before torch loads OpenMP

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from tempfile import TemporaryDirectory  # noqa: E402

import torch  # noqa: E402
from common import bare_epoch, machine, median_ratio, paired, sync, timed  # noqa: E402
from torch.autograd import DeviceType  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from cifarlab.config import load_config  # noqa: E402
from cifarlab.experiment import build_state, default_callbacks, load_data  # noqa: E402
from cifarlab.runtime import make_runtime  # noqa: E402
from cifarlab.trainer.loop import fit, train_epoch  # noqa: E402
from cifarlab.trainer.syncs import SyncCounter  # noqa: E402


@dataclass(frozen=True)
class Case:
    label: str
    recipe: str
    batch_size: int
    overrides: tuple[str, ...] = ()


GPU_CASES = [Case("fast", "fast", 1024),
             # the recipe peaks at epoch 5 of 24; one bench epoch peaks at the same fraction
             Case("custom_resnet", "custom-resnet-onecycle", 512, ("schedule.peak_epoch=0.21",)),
             Case("resnet18", "resnet18-steplr", 128)]
CPU_CASES = [Case("fast (widths 16/32/32)", "fast", 256, ("model.options={widths: [16, 32, 32]}",)),
             Case("convnet (width 8)", "cifar10-quick", 256, ("model.options={width: 8}",))]
NOT_LAUNCHES = {"aten::view", "aten::expand", "aten::as_strided", "aten::slice", "aten::select", "aten::t",
                "aten::unsqueeze", "aten::reshape", "aten::transpose", "aten::permute", "aten::detach",
                "aten::alias", "aten::flatten", "aten::_reshape_alias", "aten::squeeze", "aten::unflatten",
                "aten::lift_fresh", "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::view_as",
                "aten::expand_as", "aten::_unsafe_view", "aten::resolve_conj", "aten::resolve_neg",
                "aten::result_type", "aten::to", "aten::contiguous"}  # no kernel of their own
CUDA_LAUNCHES = {"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                 "cudaGraphLaunch"}  # a replayed CUDA graph (train.compile=reduce-overhead) is one launch
CUDA_SYNCS = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"}


SCHEDULE_AT_START: dict[int, dict] = {}  # id(state) -> its schedule before the first step


def make_state(case: Case, steps: int, run_dir: Path):
    cfg = load_config(case.recipe, [
        "data.dataset=synthetic", f"data.options={{num_train: {steps * case.batch_size}, "
        f"num_test: {case.batch_size}, image_size: 32, channels: 3}}", "data.mean=null", "data.std=null",
        f"train.batch_size={case.batch_size}", f"train.eval_batch_size={case.batch_size}", "train.epochs=1",
        "schedule.lr_peak=null", "output.report=false", "output.tensorboard=false", "output.progress=none",
        *case.overrides])
    runtime = make_runtime(cfg.train, cfg.seed)
    state = build_state(cfg, runtime, load_data(cfg.data), run_dir)
    SCHEDULE_AT_START[id(state)] = state.objects.schedule.state_dict()
    return state, default_callbacks(cfg, run_dir, is_main=True)


def restart(state) -> None:
    """Back to the start of the one-epoch run (OneCycleLR refuses to step past its last step)."""
    state.progress.epoch, state.progress.step, state.progress.batch_in_epoch, state.stop = 0, 0, 0, None
    state.progress.history.clear()
    state.objects.schedule.load_state_dict(SCHEDULE_AT_START[id(state)])


def fit_epoch(state, callbacks) -> int:
    """One epoch of `fit`, evaluation and checkpoint included."""
    restart(state)
    fit(state, callbacks)
    return state.steps_per_epoch * state.objects.train_loader.batch_size


def steps_of_fit(state, callbacks) -> None:
    """The training steps of `fit` alone (callbacks included), without the epoch end."""
    restart(state)
    train_epoch(state, callbacks)


def per_step(work, steps: int, cuda: bool) -> dict[str, float]:
    """Host ms, GPU ms, launches, syncs and copies per step of `work()`, which runs `steps` steps.

    Host ms: on a CPU the wall time; on a GPU the wall time of the profiled run less the time spent
    blocked in synchronising calls, i.e. what the host needs to issue a step (profiler overhead included).
    """
    sync()
    started = time.perf_counter()
    work()
    wall_ms = 1000 * (time.perf_counter() - started)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        work()
        sync()
        profiled_ms = 1000 * (time.perf_counter() - started)
    events = prof.events()
    if cuda:
        launches = sum(e.name in CUDA_LAUNCHES for e in events)
        syncing = [e for e in events if e.name in CUDA_SYNCS or e.name == "cudaMemcpy"]
        syncs = sum(e.name in CUDA_SYNCS for e in events)
        copies = sum(e.name.startswith("cudaMemcpy") for e in events)
        gpu_ms = sum(e.time_range.elapsed_us() for e in events if e.device_type == DeviceType.CUDA) / 1000
        host_ms = profiled_ms - sum(e.time_range.elapsed_us() for e in syncing) / 1000
    else:
        launches = sum(e.name.startswith("aten::") and e.name not in NOT_LAUNCHES and
                       not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::")) for e in events)
        with SyncCounter() as counter:
            work()
        syncs, copies, gpu_ms, host_ms = counter.total, float("nan"), float("nan"), wall_ms
    return {"host_ms": host_ms / steps, "gpu_ms": gpu_ms / steps, "launches": launches / steps,
            "syncs": syncs / steps, "copies": copies / steps}


def run_case(case: Case, steps: int, repeats: int, cuda: bool) -> dict:
    with TemporaryDirectory() as tmp:
        state, callbacks = make_state(case, steps, Path(tmp))
        batches = list(state.objects.train_loader.batches(0))  # the bare loop's data: made once, on the device
        loader = state.objects.train_loader
        indices = loader.permutation(1)[:loader.batch_size]
        fit_epoch(state, callbacks)  # warm-up: lazy optimizer state, cuDNN autotuning, allocator
        bare_epoch(state, batches)
        fits, bares = paired(lambda: timed(lambda: fit_epoch(state, callbacks)),
                             lambda: timed(lambda: bare_epoch(state, batches)), repeats)
        return {
            "case": case, "precision": state.runtime.precision.name, "steps": steps,
            "fit": statistics.median(fits), "bare": statistics.median(bares), "ratio": median_ratio(bares, fits),
            "fit_step": per_step(lambda: steps_of_fit(state, callbacks), steps, cuda),
            "bare_step": per_step(lambda: bare_epoch(state, batches), steps, cuda),
            # what the loader launches for one training batch: gather, augment, normalise
            "batch_launches": per_step(lambda: loader.make_batch(indices, epoch=1, batch_index=1), 1, cuda)["launches"],
        }


def check_gpu_cases(steps: int) -> None:
    """Build (not run) the GPU cases at batch 8, so a CPU-only CI run catches a recipe they no longer fit."""
    for case in GPU_CASES:
        with TemporaryDirectory() as tmp:
            make_state(Case(case.label, case.recipe, 8, case.overrides), steps, Path(tmp))


def table(rows: list[dict]) -> str:
    head = ("| model | batch | precision | fit img/s | bare img/s | bare/fit | host ms/step fit (bare) | "
            "GPU ms/step fit (bare) | launches/step fit (bare) | of which loader | syncs/step fit (bare) | "
            "copies/step fit (bare) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        f, b = r["fit_step"], r["bare_step"]
        pair = lambda key, fmt: "–" if f[key] != f[key] else f"{format(f[key], fmt)} ({format(b[key], fmt)})"  # noqa: E731
        lines.append(f"| {r['case'].label} | {r['case'].batch_size} | {r['precision']} | {r['fit']:.0f} | "
                     f"{r['bare']:.0f} | {r['ratio']:.3f} | {pair('host_ms', '.2f')} | {pair('gpu_ms', '.2f')} | "
                     f"{pair('launches', '.0f')} | {r['batch_launches']:.0f} | {pair('syncs', '.2f')} | "
                     f"{pair('copies', '.2f')} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps of each model, one pair (CI)")
    parser.add_argument("--steps", type=int, help="steps per epoch (default 50 on a GPU, 8 on a CPU)")
    parser.add_argument("--repeats", type=int, help="paired runs (default 5 on a GPU, 3 on a CPU)")
    parser.add_argument("--compile", choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                        help="compile the model (train.compile) for fit and the bare loop alike")
    parser.add_argument("--only", nargs="+", metavar="LABEL", help="cases whose label starts with one of these")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    steps = args.steps or (3 if args.smoke else 50 if cuda else 8)
    repeats = args.repeats or (1 if args.smoke else 5 if cuda else 3)
    print(f"machine: {machine()}\n"
          f"{'device: ' + torch.cuda.get_device_name(0) if cuda else 'no CUDA device: small models on the CPU'}, "
          f"torch {torch.__version__}; {steps} steps per epoch, {repeats} pairs", flush=True)
    cases = GPU_CASES if cuda else CPU_CASES
    if args.only:
        cases = [c for c in cases if c.label.startswith(tuple(args.only))]
    if args.compile:
        cases = [Case(f"{c.label}, compile={args.compile}", c.recipe, c.batch_size,
                      (*c.overrides, f"train.compile={args.compile}")) for c in cases]
    if args.smoke and not cuda:  # CI machines are small: a quarter of the batch
        cases = [Case(c.label, c.recipe, c.batch_size // 4, c.overrides) for c in cases]
        check_gpu_cases(steps)
    rows = []
    for case in cases:  # each row as soon as it is measured, so a run cut short keeps what it had
        rows.append(run_case(case, steps, repeats, cuda))
        lines = table(rows).splitlines()
        print("\n".join(lines if len(rows) == 1 else lines[-1:]), flush=True)
    return rows


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
