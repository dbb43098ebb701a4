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
   the run's batch shape and memory format, on random images, with every RNG put back afterwards. Where a
   full step would not fit the budget (`probe_batch`), a slice of the batch is timed instead. Each candidate
   (`candidates`) is warmed up until its step time settles (`warm_up`: oneDNN and cuDNN pick their kernels
   on the first steps, and oneDNN's bf16 ones took up to 5 steps here), then rounds of steps alternate
   between the candidates, timed in CPU seconds of the process on a CPU (as the MFU probe in throughput.py:
   a neighbour's load does not flip the answer) and in synchronised wall time on CUDA. It stops once the
   answer is clear (`_clear`), BUDGET_SECONDS are spent, or WALL_CAP_SECONDS of wall time on a very busy
   machine.
4. `decide`: the safest candidate unless a less safe one is at least MARGIN faster; a candidate whose
   loss is not finite, or whose step fails, is out. fp16 always trains with a GradScaler.

More knobs fit the same shape: a list of candidates, a way to build the step under each, `time_steps` and
`decide`. torch.compile is not measured, and stays off: its compile alone (10-600 s on a CPU) is a hundred
times the budget, and where it was measured (convnet width 8, 1 thread) the compiled step ran at 0.84x eager
(docs/precision.md).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from cifarlab.models.registry import build_model
from cifarlab.runtime import CPU_AUTO_ENV, Precision, forced_cpu_precision
from cifarlab.trainer import machine_load
from cifarlab.trainer.optim import GradStep, build_optimizer
from cifarlab.trainer.precision_cache import PrecisionChoice, cache_key, read_cached, write_cached

MARGIN = 1.10  # a less safe candidate must be this much faster than the pick so far (no flapping on noise)
BUDGET_SECONDS = 3.0  # the whole measurement, warm-up included (CPU seconds per thread on a CPU)
WALL_CAP_SECONDS = 6.0  # and never more wall time than this after a round (a very busy machine)
SAMPLE_SECONDS = 0.02  # steps in one timing: enough to last this long (tiny models take ~1 ms a step)
CUDA_SAMPLE_SECONDS = 0.1  # on CUDA each timing ends in a synchronisation: enough steps that its bubble is small
WARMUP_AGREE, WARMUP_MAX_STEPS = 0.15, 6  # warm until two consecutive steps agree within 15% (at most 6 steps)
WARMUP_SHARE = 0.6  # of the budget the warm-ups may take, shared equally by the candidates
STEPS_PER_CANDIDATE = 5  # what a candidate's warm-up and rounds usually take: sizes the probe's batch slice
FIRST_SLICE = 16  # the smallest slice of the batch the probe times
MIN_ROUNDS, MAX_ROUNDS = 3, 12
AUTO = "auto"


def candidates(device: torch.device) -> tuple[str, ...]:
    """What `auto` may pick on `device`, safest first (fp32 on CUDA runs its matmuls and convolutions in
    TF32, which `runtime.make_runtime` enables). bf16 on CUDA only where the GPU has bf16 tensor cores."""
    if device.type != "cuda":
        return ("fp32", "bf16")
    bf16 = torch.cuda.get_device_capability(device)[0] >= 8 and torch.cuda.is_bf16_supported()
    return ("fp32", "bf16", "fp16") if bf16 else ("fp32", "fp16")


# ------------------------------------------------------------------------------------------ the decision

def decide(seconds_per_step: Mapping[str, Optional[float]], order: Sequence[str], margin: float = MARGIN) -> str:
    """The candidate to train with, from measured seconds per step (None: out, its loss was not finite or its
    step failed). `order` is safest first: a later candidate replaces the pick only when it is at least
    `margin` times faster, so a near tie keeps the safer one. With none measured, the safest."""
    measured = [name for name in order if seconds_per_step.get(name) is not None]
    if not measured:
        return order[0]
    pick = measured[0]
    for name in measured[1:]:
        if seconds_per_step[pick] >= margin * seconds_per_step[name]:
            pick = name
    return pick


def speedups(seconds_per_step: Mapping[str, Optional[float]], baseline: str) -> dict[str, Optional[float]]:
    """Each candidate's step rate as a multiple of `baseline`'s (None where either is out)."""
    base = seconds_per_step.get(baseline)
    return {name: (base / seconds if base and seconds else None) for name, seconds in seconds_per_step.items()}


def measured_reason(seconds_per_step: Mapping[str, Optional[float]], chosen: str, order: Sequence[str],
                    where: str, detail: str) -> str:
    """`measured 1.31x fp32 on this CPU, 2.1 s` (the pick against the baseline first, then the others)."""
    baseline, ratios = order[0], speedups(seconds_per_step, order[0])

    def ratio(name: str) -> str:
        return f"{ratios[name]:.2f}x" if ratios[name] is not None else "out (non-finite loss or a failed step)"

    others = [f"{name} {ratio(name)}" for name in order[1:] if name != chosen]
    head = f"{ratio(chosen)} {baseline}" if chosen != baseline else f"{others.pop(0)} {baseline}"
    return f"measured {', '.join([head, *others])} on {where}, {detail}"


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


def _clear(ratios: Mapping[str, Optional[float]], rounds: int, margin: float = MARGIN) -> bool:
    """Whether more rounds could no longer change the answer, from the other candidates' speed-ups over the
    baseline: a factor of 4 either way is clear at once, a factor of 2 after two rounds (one can be a
    neighbour's burst); after MIN_ROUNDS, anything outside [1, margin x 1.1] (near the margin needs more)."""
    known = [r for r in ratios.values() if r is not None]
    if all(r <= 0.25 or r >= 4.0 for r in known):
        return True
    if rounds >= 2 and all(r <= 0.5 or r >= 2.0 for r in known):
        return True
    return rounds >= MIN_ROUNDS and all(r < 1.0 or r > margin * 1.1 for r in known)


def warm_up(step: Callable[[], torch.Tensor], clock: Callable[[], float], deadline: float,
            max_steps: int = WARMUP_MAX_STEPS, agree: float = WARMUP_AGREE) -> Optional[list[float]]:
    """Steps until two consecutive ones agree within `agree` (the step time has settled), `max_steps` were
    taken, or `clock()` passed `deadline`; returns their times, or None where the candidate is out (its loss
    was not finite or its step failed). Why adaptive: oneDNN creates and caches its primitives on the first
    steps of a shape, and its bf16 (AMX) kernels took 2-4 steps to settle here where fp32 took 2-3
    (bench/probe_warmup.py); one fixed warm-up step once made bf16 look 0.54x fp32 on a machine where whole
    runs were 1.63x faster."""
    times: list[float] = []
    while True:
        begin = clock()
        if not _finite(_step(step)):
            return None
        times.append(clock() - begin)
        if _settled(times, agree) or len(times) >= max_steps or clock() > deadline:
            return times


def _settled(times: Sequence[float], agree: float = WARMUP_AGREE) -> bool:
    return len(times) >= 2 and max(times[-2:]) <= (1 + agree) * min(times[-2:])


def time_steps(steps: Mapping[str, Callable[[], torch.Tensor]], clock: Callable[[], float],
               budget: float = BUDGET_SECONDS, wall_budget: float = WALL_CAP_SECONDS,
               sample_seconds: float = SAMPLE_SECONDS) -> dict[str, Optional[float]]:
    """Seconds per step of each of `steps` (name -> a function taking one training step, returning its loss),
    safest first: each warmed up (`warm_up`, within WARMUP_SHARE of `budget`), then alternating rounds until
    the answer is clear or `budget` (in `clock`'s seconds, warm-up included) or `wall_budget` wall seconds are
    spent. The warm-up's last steps count as timings, and decide alone once the budget is spent. `clock()` must include
    waiting for the device."""
    started, wall_started = clock(), time.perf_counter()
    names, out, unsettled = list(steps), set(), set()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index, name in enumerate(names):
        deadline = started + budget * WARMUP_SHARE * (index + 1) / len(names)
        times = warm_up(steps[name], clock, deadline)
        if times is None:
            out.add(name)
        else:
            samples[name].append(min(times[-2:]))
            unsettled |= set() if _settled(times) else {name}

    def best() -> dict[str, Optional[float]]:
        # The fastest timing of each: a neighbour's load and OpenMP threads spinning while they wait for a
        # descheduled sibling only ever add time (as the matmul peak probe in throughput.py keeps its best).
        return {name: (min(samples[name]) if name not in out and samples[name] else None) for name in names}

    others = {name: r for name, r in speedups(best(), names[0]).items() if name != names[0]}
    over_budget = clock() - started > budget or time.perf_counter() - wall_started > wall_budget
    if over_budget or (not unsettled and _clear(others, 1)):
        # Past the budget the warm-ups decide (a model whose every slice is slow: resnet18 at 16 images),
        # as does a fourfold gap after settled warm-ups (bf16 at 0.04x fp32 took 15 s a step here); a
        # warm-up cut short within the budget is no measure yet, so rounds follow.
        return best()
    repeat = 1
    for rounds in range(1, MAX_ROUNDS + 1):
        round_started = clock()
        for name in [name for name in (names if rounds % 2 else names[::-1]) if name not in out]:
            begin = clock()
            losses = [_step(steps[name]) for _ in range(repeat)]
            samples[name].append((clock() - begin) / repeat)
            if not all(_finite(loss) for loss in losses):  # read after the clock stopped
                out.add(name)
        timed = [seconds for seconds in best().values() if seconds is not None]
        others = {name: r for name, r in speedups(best(), names[0]).items() if name != names[0]}
        if len(timed) < 2 or _clear(others, rounds + 1):  # the settled warm-up step counts as a round
            break
        if rounds == 1:  # enough steps per timing that a tiny model's step is not lost in the clock's noise
            repeat = max(1, min(16, math.ceil(sample_seconds / max(min(timed), 1e-6))))
        next_round = (clock() - round_started) * (repeat if rounds == 1 else 1)
        if clock() - started + next_round > budget or time.perf_counter() - wall_started > wall_budget:
            break
    return best()


def probe_batch(batch: int, step_seconds: Callable[[int], float], target_seconds: float,
                first_slice: int = FIRST_SLICE) -> int:
    """The images per probe step: the run's `batch` where a step of it should take at most `target_seconds`,
    else the largest slice on the ladder first_slice, 4x, 16x, ... that should. `step_seconds(n)` times one step
    of n images; the next rung is predicted per image from it (a first step at a shape, and a smaller one,
    only overestimate: a slice can come out smaller than needed, never over budget).
    Why a slice is sound: bf16/fp32 per image at slices of 16-64 images was within ~10% of the ratio at the
    run's batch for the built-in models here (bench/probe_warmup.py, docs/precision.md), while a full step of
    custom_resnet at batch 512 takes 10 s or more on one core."""
    size = min(batch, first_slice)
    while size < batch:
        bigger = min(batch, 4 * size)
        if step_seconds(size) * bigger / size > target_seconds:
            return size
        size = bigger
    return batch


def _step(step: Callable[[], torch.Tensor]) -> Optional[torch.Tensor]:
    """One step's loss, or None where it raised (the candidate is out, not the run)."""
    try:
        return step().detach()
    except Exception:  # e.g. an op with no bf16 kernel in a user's model: that candidate cannot train it
        return None


def _finite(loss: Optional[torch.Tensor]) -> bool:
    # note: a CPU-GPU sync point, once per timing, after its clock has stopped
    return loss is not None and bool(torch.isfinite(loss).all())


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
        begin = clock()
        if device.type == "cuda":
            # The whole batch (a step takes milliseconds), and one untimed step of each candidate first, outside
            # the budget: the first step at a shape and dtype runs cuDNN's kernel search and loads kernels. On an
            # H100 a probe that counted it (and sliced the batch from it) measured bf16 and fp16 at 0.00-0.66x
            # fp32 where whole loops ran them at 0.76-1.20x (bench/README.md). The run would pay its own
            # precision's search anyway; cuDNN keeps the results for it.
            n = N
        else:
            def safest_step(n: int) -> float:
                step_begin = clock()
                _step(make_step(model, optimizer, Precision(order[0], device.type), inputs[:n], labels[:n]))
                return clock() - step_begin

            n = probe_batch(N, safest_step, budget / (len(order) * STEPS_PER_CANDIDATE))
        steps = {name: make_step(model, optimizer, Precision(name, device.type), inputs[:n], labels[:n])
                 for name in order}
        if device.type == "cuda":
            for step in steps.values():
                _step(step)
            seconds = time_steps(steps, clock, budget, sample_seconds=CUDA_SAMPLE_SECONDS)
        else:
            seconds = time_steps(steps, clock, budget - (clock() - begin))
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
