"""A race of training steps: time each candidate's step, alternating, until the answer is clear, then pick.

Model-free, so any `auto` knob can use it (trainer/autotune.py times precisions with it): give it one function
per candidate that takes a training step and returns its loss, and a clock that includes waiting for the device.
Written here rather than taken from a benchmarking library (torch.utils.benchmark, pytest-benchmark) because
the budget is a run's start-up, not a benchmark's: a candidate is warmed up only until its step time settles,
the rounds stop as soon as no further round could change the pick, and a candidate whose loss is not finite
is out, not an error.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Optional, Sequence

import torch

MARGIN = 1.10  # a less safe candidate must be this much faster than the pick so far (no flapping on noise)
BUDGET_SECONDS = 3.0  # the whole measurement, warm-up included (CPU seconds per thread on a CPU)
WALL_CAP_SECONDS = 6.0  # and never more wall time than this after a round (a very busy machine)
SAMPLE_SECONDS = 0.02  # steps in one timing: enough to last this long (tiny models take ~1 ms a step)
WARMUP_AGREE, WARMUP_MAX_STEPS = 0.15, 6  # warm until two consecutive steps agree within 15% (at most 6 steps)
WARMUP_SHARE = 0.6  # of the budget the warm-ups may take, shared equally by the candidates
FIRST_SLICE = 16  # the smallest slice of the batch the probe races at
SCOUT_SLICE = 2  # images a step of the scout takes (not 1: a user's BatchNorm1d cannot train on one image)
CLEAR_AT_ONCE = 4.0  # a factor between two candidates' steps that no further timing would reverse: the race
# stops at once on it, and the scout puts a candidate that many times slower than the safest out of the race
HOPELESS = CLEAR_AT_ONCE
SCOUT_SHARE = 0.25  # a scout step that took this share of the budget is not taken twice
MIN_ROUNDS, MAX_ROUNDS = 3, 12


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


# ------------------------------------------------------------------------------------------ the race

def _clear(ratios: Mapping[str, Optional[float]], rounds: int, margin: float = MARGIN) -> bool:
    """Whether more rounds could no longer change the answer, from the other candidates' speed-ups over the
    baseline: a factor of CLEAR_AT_ONCE either way is clear at once, a factor of 2 after two rounds (one can be
    a neighbour's burst); after MIN_ROUNDS, anything outside [1, margin x 1.1] (near the margin needs more)."""
    known = [r for r in ratios.values() if r is not None]
    if all(r <= 1 / CLEAR_AT_ONCE or r >= CLEAR_AT_ONCE for r in known):
        return True
    if rounds >= 2 and all(r <= 0.5 or r >= 2.0 for r in known):
        return True
    return rounds >= MIN_ROUNDS and all(r < 1.0 or r > margin * 1.1 for r in known)


def warm_up(step: Callable[[], torch.Tensor], clock: Callable[[], float], deadline: float,
            max_steps: int = WARMUP_MAX_STEPS, agree: float = WARMUP_AGREE,
            taken: Sequence[float] = ()) -> Optional[list[float]]:
    """Steps until two consecutive ones agree within `agree` (the step time has settled), `max_steps` were
    taken, or `clock()` passed `deadline`; returns their times (after `taken`, the times of steps of the same
    shape already taken), or None where the candidate is out (its loss
    was not finite or its step failed). Why adaptive: oneDNN creates and caches its primitives on the first
    steps of a shape, and its bf16 (AMX) kernels took 2-4 steps to settle here where fp32 took 2-3
    (bench/probe_warmup.py); one fixed warm-up step once made bf16 look 0.54x fp32 on a machine where whole
    runs were 1.63x faster."""
    times = list(taken)
    while True:
        begin = clock()
        if not finite(try_step(step)):
            return None
        times.append(clock() - begin)
        if _settled(times, agree) or len(times) >= max_steps or clock() > deadline:
            return times


def _settled(times: Sequence[float], agree: float = WARMUP_AGREE) -> bool:
    return len(times) >= 2 and max(times[-2:]) <= (1 + agree) * min(times[-2:])


def time_steps(steps: Mapping[str, Callable[[], torch.Tensor]], clock: Callable[[], float],
               budget: float = BUDGET_SECONDS, wall_budget: float = WALL_CAP_SECONDS,
               sample_seconds: float = SAMPLE_SECONDS,
               taken: Optional[Mapping[str, float]] = None) -> dict[str, Optional[float]]:
    """Seconds per step of each of `steps` (name -> a function taking one training step, returning its loss),
    safest first: each warmed up (`warm_up`, within WARMUP_SHARE of `budget`; a step of it already `taken` at
    the same shape counts as its first), then alternating rounds until
    the answer is clear or `budget` (in `clock`'s seconds, warm-up included) or `wall_budget` wall seconds are
    spent. The warm-up's last steps count as timings, and decide alone once the budget is spent. `clock()` must include
    waiting for the device."""
    started, wall_started = clock(), time.perf_counter()
    names, out, unsettled = list(steps), set(), set()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index, name in enumerate(names):
        deadline = started + budget * WARMUP_SHARE * (index + 1) / len(names)
        times = warm_up(steps[name], clock, deadline, taken=[taken[name]] if taken and name in taken else [])
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
            losses = [try_step(steps[name]) for _ in range(repeat)]
            samples[name].append((clock() - begin) / repeat)
            if not all(finite(loss) for loss in losses):  # read after the clock stopped
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


def scout(steps: Mapping[str, Callable[[], torch.Tensor]], clock: Callable[[], float],
          budget: float = BUDGET_SECONDS) -> dict[str, Optional[float]]:
    """Seconds per step of each of `steps` (safest first; steps of a tiny slice of the batch), taken before the
    race: the best of two steps each, except that a candidate stops after one step when that step alone was
    HOPELESS times the safest's best and took SCOUT_SHARE of `budget`. None where its step failed or its
    loss was not finite (the race will find that out at its own slice). `hopeless` reads the result.
    Why: where a CPU has no bf16 arithmetic (no AVX512-BF16), oneDNN emulates it, and one step of resnet18 at
    16 images, the race's smallest slice, took 12.5 CPU s in bf16 against 0.97 in fp32 (2 threads, an AMD
    EPYC family 25 model 1): the probe spent 4-16 CPU s there against a budget of 3 a thread. At 2 images
    the gap shows as well (bf16 7.6-12x slower for fastnet, custom_resnet and resnet18) at an eighth of the
    cost. Where it shows less (convnet, 1.7-5x: a tiny step is mostly fixed costs), a step is cheap enough
    to race. Best of two, because a first step at a new shape includes oneDNN creating its kernels."""
    names, seconds = list(steps), {}
    for name in names:
        times: list[float] = []
        for _ in range(2):
            begin = clock()
            if not finite(try_step(steps[name])):
                times = []
                break
            times.append(clock() - begin)
            base = seconds.get(names[0])
            if name != names[0] and base and times[-1] > max(HOPELESS * base, SCOUT_SHARE * budget):
                break
        seconds[name] = min(times) if times else None
    return seconds


def hopeless(seconds: Mapping[str, Optional[float]], order: Sequence[str]) -> list[str]:
    """The candidates the scout put out of the race: measured there, and HOPELESS times slower than the
    safest, the factor the race itself calls clear at once (`_clear`). A step of 2 images is mostly costs
    every precision pays, which narrow a gap: on that EPYC (2 threads) bf16 was 1.7-9.5x slower at 2 images
    where it was 5.8-16x slower at 16, for each built-in model."""
    base = seconds.get(order[0])
    return [name for name in order[1:] if base and seconds.get(name) and seconds[name] > HOPELESS * base]


def worth_a_race(seconds: Mapping[str, Optional[float]], order: Sequence[str], images: int,
                 budget_left: float) -> bool:
    """Whether to race after the scout (`seconds`: its seconds per step at `images` images): no candidate is
    hopeless, and a step of the slowest at FIRST_SLICE images fits in `budget_left`, predicted per image
    from the scout (an overestimate: a small step carries the same fixed costs). Where it would not, the
    race could not run within the budget, and the scout's figures decide. Why both: on the EPYC a scout once
    left bf16 in the race for custom_resnet (under 5x slower at 2 images, where it had measured 9.3x), and
    the race at 16 images then took 13 s of wall time (a bf16 step there: 8.5 CPU s)."""
    measured = [t for t in seconds.values() if t is not None]
    slowest = max(measured, default=0.0)
    return not hopeless(seconds, order) and slowest * FIRST_SLICE / images <= budget_left


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


def try_step(step: Callable[[], torch.Tensor]) -> Optional[torch.Tensor]:
    """One step's loss, or None where it raised (the candidate is out, not the run)."""
    try:
        return step().detach()
    except Exception:  # e.g. an op with no bf16 kernel in a user's model: that candidate cannot train it
        return None


def finite(loss: Optional[torch.Tensor]) -> bool:
    # note: a CPU-GPU sync point, once per timing, after its clock has stopped
    return loss is not None and bool(torch.isfinite(loss).all())
