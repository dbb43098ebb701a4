"""`auto` settings chosen by measuring the run's own training step on this machine, not by reading flags.

Why measure: CPU flags gave opposite answers for the same question. With AVX512-BF16 and no AMX, bf16
autocast trained every built-in model at 0.60-0.78x the fp32 rate on an Intel Xeon and at 1.67-2.09x on an
AMD EPYC Zen 4 (docs/precision.md); which kernels oneDNN (or cuDNN) has for a model's layer shapes, and how much of a
small model's step is not arithmetic at all, decide it, and neither is written in a flag.

How (`choose_precision`), where `train.precision` is `auto` (or `fp16` on a CPU, which has no fp16 path):
1. `CIFARLAB_CPU_AUTO_PRECISION=bf16|fp32` on a CPU forces the answer (tests and docs try the other
   machine's answer with it); no measurement.
2. The cache (`precision_cache.py`): one small JSON file per key (device name and flags, torch version, model and
   options, batch shape, memory format, optimizer, threads). A file that cannot be read or does not match
   its key is ignored and measured again, never an error.
3. Otherwise `measure_precisions`: a throwaway copy of the run's model and optimizer (lr 0, so the weights
   cannot blow up on random images and no candidate is dropped for a divergence that is not its fault), at
   the run's batch shape and memory format, on random images, with every RNG put back afterwards. On a CPU a
   scout comes first (`scout`): two steps of each candidate at 2 images, and one four times slower than the
   safest there is out with no race (bf16 where oneDNN emulates it: a step of it alone could take 12 s), as
   is a race that could not fit the budget (`worth_a_race`).
   Where a full step of the slowest candidate would not fit the budget (`probe_batch`), a slice of the batch
   is timed instead. Each candidate
   (`candidates`) is warmed up until its step time settles (`warm_up`: oneDNN and cuDNN pick their kernels
   on the first steps, and oneDNN's bf16 ones took up to 5 steps here), then rounds of steps alternate
   between the candidates, timed in CPU seconds of the process on a CPU (as the MFU probe in throughput.py:
   a neighbour's load does not flip the answer) and in synchronised wall time on CUDA. It stops once the
   answer is clear (`_clear`), BUDGET_SECONDS are spent, or WALL_CAP_SECONDS of wall time on a very busy
   machine.
4. `decide`: the safest candidate unless a less safe one is at least MARGIN faster; a candidate whose
   loss is not finite, or whose step fails, is out. fp16 always trains with a GradScaler.

The race (warm-ups, alternating rounds, `decide`) is model-free and lives in trainer/step_race.py. More knobs
fit the same shape: a list of candidates, a way to build the step under each, `time_steps` and `decide`.
torch.compile is not measured, and stays off: its compile alone (10-600 s on a CPU) is a hundred times the
budget, and where it was measured (convnet width 8, 1 thread) the compiled step ran at 0.84x eager
(docs/precision.md).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from cifarlab.models.registry import build_model
from cifarlab.runtime import CPU_AUTO_ENV, Precision, forced_cpu_precision
from cifarlab.trainer import machine_load
from cifarlab.trainer.optim import GradStep, build_optimizer
from cifarlab.trainer.precision_cache import PrecisionChoice, cache_key, read_cached, write_cached
from cifarlab.trainer.step_race import (
    BUDGET_SECONDS,
    SCOUT_SLICE,
    decide,
    measured_reason,
    probe_batch,
    scout,
    time_steps,
    try_step,
    worth_a_race,
)

CUDA_SAMPLE_SECONDS = 0.1  # on CUDA each timing ends in a synchronisation: enough steps that its bubble is small
STEPS_PER_CANDIDATE = 5  # what a candidate's warm-up and rounds usually take: sizes the probe's batch slice
AUTO = "auto"


def candidates(device: torch.device) -> tuple[str, ...]:
    """What `auto` may pick on `device`, safest first (fp32 on CUDA runs its matmuls and convolutions in
    TF32, which `runtime.make_runtime` enables). bf16 on CUDA only where the GPU has bf16 tensor cores."""
    if device.type != "cuda":
        return ("fp32", "bf16")
    bf16 = torch.cuda.get_device_capability(device)[0] >= 8 and torch.cuda.is_bf16_supported()
    return ("fp32", "bf16", "fp16") if bf16 else ("fp32", "fp16")


# ------------------------------------------------------------------------------------------ the measurement

@dataclass
class Timings:
    """Seconds per training step of each candidate (None: out), the wall time the measurement took, and the
    images per timed step (the run's batch, or a slice of it: `probe_batch`), and the share of the machine's
    CPU other processes used meanwhile (None: unknown; `machine_load`)."""
    seconds_per_step: dict[str, Optional[float]]
    wall_seconds: float
    batch: Optional[int] = None
    others_share: Optional[float] = None


def make_step(model: nn.Module, optimizer: torch.optim.Optimizer, precision: Precision, inputs: torch.Tensor,
              labels: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One training step as the loop takes it: forward and loss under the autocast, backward (scaled under
    fp16), optimizer step."""
    loss_fn, grad_step = nn.CrossEntropyLoss(), GradStep(optimizer, precision.make_scaler(), None)

    def step() -> torch.Tensor:
        with precision.autocast():
            loss = loss_fn(model(inputs), labels)
        grad_step(loss)
        return loss

    return step


def measure_precisions(model_cfg, optim_cfg, shape: tuple[int, int, int, int], num_classes: int,
                       device: torch.device, channels_last: bool, order: Sequence[str],
                       budget_seconds: float = BUDGET_SECONDS) -> Timings:
    """`time_steps` of a throwaway copy of the run's model and optimizer under each of `order`, at the run's
    batch shape `shape` (N, C, H, W), or at a slice of the batch (`probe_batch`) where a full step would not
    fit the budget. Every RNG is put back. On a CPU the budget is in CPU seconds per thread (about wall
    seconds on an idle machine), so a busy machine stretches the wall time, not the work."""
    started, load_mark = time.perf_counter(), machine_load.mark()
    N, C, H, W = shape
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
        model = build_model(model_cfg, num_classes, C).to(device).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, optim_cfg)
        for group in optimizer.param_groups:  # the step's cost with weights that cannot blow up
            group["lr"] = 0.0
        inputs = torch.randn(N, C, H, W, device=device)
        inputs = inputs.contiguous(memory_format=torch.channels_last) if channels_last else inputs
        labels = torch.randint(0, num_classes, (N,), device=device)
        clock = _clock(device)
        budget = budget_seconds * (torch.get_num_threads() if device.type != "cuda" else 1)

        def step_at(name: str, n: int) -> Callable[[], torch.Tensor]:
            return make_step(model, optimizer, Precision(name, device.type), inputs[:n], labels[:n])

        if device.type == "cuda":
            # The whole batch (a step takes milliseconds), and one untimed step of each candidate first, outside
            # the budget: the first step at a shape and dtype runs cuDNN's kernel search and loads kernels. On an
            # H100 a probe that counted it (and sliced the batch from it) measured bf16 and fp16 at 0.00-0.66x
            # fp32 where whole loops ran them at 0.76-1.20x (bench/README.md). The run would pay its own
            # precision's search anyway; cuDNN keeps the results for it.
            n, steps = N, {name: step_at(name, N) for name in order}
            for step in steps.values():
                try_step(step)
            seconds = time_steps(steps, clock, budget, sample_seconds=CUDA_SAMPLE_SECONDS)
        else:
            begin = clock()
            n = min(N, SCOUT_SLICE)
            seconds = scout({name: step_at(name, n) for name in order}, clock, budget)
            if worth_a_race(seconds, order, n, budget - (clock() - begin)):
                ladder: dict[int, dict[str, float]] = {}

                def slowest_step(n: int) -> float:  # the slice must fit the slowest candidate's steps
                    ladder[n] = {}
                    for name in order:
                        step_begin = clock()
                        try_step(step_at(name, n)())
                        ladder[n][name] = clock() - step_begin
                    return max(ladder[n].values())

                n = probe_batch(N, slowest_step, budget / (len(order) * STEPS_PER_CANDIDATE))
                # a ladder step at the slice raced is each candidate's first warm-up step (one bf16 step of
                # cifar10-quick's model at 16 images: ~0.65 CPU s where bf16 is emulated)
                seconds = time_steps({name: step_at(name, n) for name in order}, clock, budget - (clock() - begin),
                                     taken=ladder.get(n))
    return Timings(seconds, time.perf_counter() - started, batch=n,
                   others_share=machine_load.others_share(load_mark, machine_load.mark()))


def _clock(device: torch.device) -> Callable[[], float]:
    if device.type == "cuda":
        def cuda_seconds() -> float:
            torch.cuda.synchronize(device)  # note: a CPU-GPU sync point, so the time is the device's
            return time.perf_counter()
        return cuda_seconds
    # CPU seconds of the whole process (every thread): what the step costs, not what the neighbours leave us.
    return time.process_time


# ------------------------------------------------------------------------------------------ the run's answer

def wants_measurement(requested: str, device: torch.device) -> bool:
    """`auto`, or fp16 on a CPU (recipes written for GPUs ask for it; a CPU takes its fastest instead)."""
    return requested == AUTO or (requested == "fp16" and device.type != "cuda")


def choose_precision(model_cfg, optim_cfg, shape: tuple[int, int, int, int], num_classes: int,
                     device: torch.device, channels_last: bool) -> PrecisionChoice:
    """The precision `auto` trains the run's model with on `device`: forced, cached or measured (module doc)."""
    forced = forced_cpu_precision() if device.type != "cuda" else None
    if forced is not None:
        return PrecisionChoice(forced, f"{CPU_AUTO_ENV}={forced}")
    order = candidates(device)
    key = cache_key(model_cfg, optim_cfg.name, shape, num_classes, device, channels_last, order)
    cached = read_cached(key)
    if cached is not None:
        return cached
    timings = measure_precisions(model_cfg, optim_cfg, shape, num_classes, device, channels_last, order)
    chosen = decide(timings.seconds_per_step, order)
    where = "this CPU" if device.type != "cuda" else torch.cuda.get_device_name(device)
    detail = f"{timings.wall_seconds:.1f} s"
    if timings.batch is not None and timings.batch < shape[0]:
        detail += f", timing {timings.batch} of the batch's {shape[0]} images a step"
    busy = machine_load.is_busy(timings.others_share)
    if busy:
        detail += (f", while other processes used {timings.others_share:.0%} of the CPU: measured again once the "
                   "machine is quiet")
    choice = PrecisionChoice(chosen, measured_reason(timings.seconds_per_step, chosen, order, where, detail))
    if any(seconds is not None for seconds in timings.seconds_per_step.values()):
        write_cached(key, choice, busy)
    return choice


def settle_precision(cfg, runtime, dataset):
    """(cfg, runtime, choice) with `auto` replaced by the precision chosen for this run (choice None where
    train.precision was given): the config then records it, so a resume or a re-run of config.yaml trains
    in it again without measuring. In a multi-process run, rank 0 chooses and every rank takes its answer."""
    if not wants_measurement(cfg.train.precision, runtime.device):
        return cfg, runtime, None
    choice = None
    if runtime.dist.is_main:
        micro_batch = cfg.train.batch_size // runtime.dist.world_size
        shape = (micro_batch, dataset.in_channels, dataset.image_size, dataset.image_size)
        choice = choose_precision(cfg.model, cfg.optim, shape, dataset.num_classes, runtime.device,
                                  runtime.channels_last)
    if runtime.dist.enabled:
        box = [choice]
        torch.distributed.broadcast_object_list(box, src=0)
        choice = box[0]
    if cfg.train.precision != AUTO:  # fp16 on a CPU
        choice = replace(choice, reason=f"train.precision={cfg.train.precision} needs CUDA; {choice.reason}")
    train = cfg.train.model_copy(update={"precision": choice.name})
    runtime = replace(runtime, precision=Precision(choice.name, runtime.device.type), precision_source=choice.reason)
    return cfg.model_copy(update={"train": train}), runtime, choice
