"""`precision: auto` by measurement (trainer/autotune.py): the decision from injected timings (CPU and
CUDA candidates, no hardware needed), the timing loop with a fake clock, the cache, the forced answer, and
a run that records its choice in config.yaml and summary.json and keeps it on resume."""
import json
import os

import pytest
import torch
import yaml

import cifarlab
from _runs import FAST
from cifarlab.cli import main
from cifarlab.config import load_config
from cifarlab.errors import UserError
from cifarlab.experiment.resumable import recorded_precision
from cifarlab.runtime import resolve_precision
from cifarlab.trainer import autotune, machine_load, precision_cache, step_race
from cifarlab.trainer.autotune import PrecisionChoice, Timings, choose_precision
from cifarlab.trainer.step_race import decide, measured_reason, time_steps

CPU = torch.device("cpu")
CPU_ORDER = ("fp32", "bf16")
CUDA_ORDER = ("fp32", "bf16", "fp16")
SMOKE = ["output.report=false", *FAST]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder of its own, and no forced answer (the suite may run with one)."""
    monkeypatch.setenv(precision_cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("CIFARLAB_CPU_AUTO_PRECISION", raising=False)
    return tmp_path / "cache" / "autotune"


@pytest.fixture
def measured(monkeypatch):
    """Replaces the measurement by injected seconds per step; counts the calls."""
    calls = []

    def inject(seconds: dict, batch=None, others_share=None):
        def fake(model_cfg, optim_cfg, shape, num_classes, device, channels_last, order):
            calls.append(shape)
            return Timings({name: seconds.get(name) for name in order}, wall_seconds=0.4,
                           batch=batch or shape[0], others_share=others_share)
        monkeypatch.setattr(autotune, "measure_precisions", fake)
        return calls
    return inject


# ------------------------------------------------------------------------------------------ the decision

@pytest.mark.parametrize("seconds, expected", [
    ({"fp32": 1.0, "bf16": 0.5}, "bf16"),  # the Zen 4 case: bf16 2x faster
    ({"fp32": 1.0, "bf16": 0.76}, "bf16"),  # 1.31x
    ({"fp32": 1.0, "bf16": 0.95}, "fp32"),  # 1.05x: within the margin, the safer one stays
    ({"fp32": 1.0, "bf16": 1.4}, "fp32"),  # the Xeon-without-AMX case: bf16 0.7x
    ({"fp32": 1.0, "bf16": None}, "fp32"),  # bf16's loss was not finite, or its step failed
    ({"fp32": None, "bf16": 0.5}, "bf16"),
    ({"fp32": None, "bf16": None}, "fp32"),
])
def test_cpu_decision_takes_bf16_only_when_it_is_measurably_faster(seconds, expected):
    assert decide(seconds, CPU_ORDER) == expected


@pytest.mark.parametrize("seconds, expected", [
    ({"fp32": 1.0, "bf16": 0.4, "fp16": 0.38}, "bf16"),  # fp16 1.05x bf16: not worth the loss scaling
    ({"fp32": 1.0, "bf16": 0.4, "fp16": 0.3}, "fp16"),  # fp16 1.33x bf16
    ({"fp32": 1.0, "bf16": 0.97, "fp16": 0.85}, "fp16"),  # bf16 within the margin of TF32, fp16 beyond it
    ({"fp32": 1.0, "bf16": 0.5, "fp16": None}, "bf16"),  # fp16 overflowed even with a scaler
    ({"fp32": 1.0, "bf16": 1.0, "fp16": 1.0}, "fp32"),  # a tie keeps TF32
])
def test_cuda_decision_prefers_the_safer_precision_unless_another_is_10_percent_faster(seconds, expected):
    assert decide(seconds, CUDA_ORDER) == expected


@pytest.mark.parametrize("capability, bf16, expected", [((7, 0), False, ("fp32", "fp16")),
                                                        ((8, 0), True, CUDA_ORDER), ((9, 0), True, CUDA_ORDER)])
def test_cuda_candidates_include_bf16_from_ampere_on(monkeypatch, capability, bf16, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert autotune.candidates(torch.device("cuda", 0)) == expected
    assert autotune.candidates(CPU) == CPU_ORDER


def test_the_line_says_what_was_measured():
    assert PrecisionChoice("bf16", measured_reason({"fp32": 1.31, "bf16": 1.0}, "bf16", CPU_ORDER, "this CPU",
                                                   "2.1 s")).line() == \
        "precision: bf16 (measured 1.31x fp32 on this CPU, 2.1 s)"
    assert measured_reason({"fp32": 1.0, "bf16": 1.25}, "fp32", CPU_ORDER, "this CPU", "0.4 s") == \
        "measured bf16 0.80x fp32 on this CPU, 0.4 s"
    cuda = measured_reason({"fp32": 1.0, "bf16": 0.5, "fp16": None}, "bf16", CUDA_ORDER, "NVIDIA H100", "1.0 s")
    assert cuda.startswith("measured 2.00x fp32, fp16 out") and cuda.endswith("on NVIDIA H100, 1.0 s")


# ------------------------------------------------------------------------------------------ the timing loop

class FakeDevice:
    """Steps that advance a fake clock by a fixed cost each (seconds), or by the costs of a warm-up curve and
    then its last one, with a loss that may be NaN."""

    def __init__(self):
        self.now, self.steps = 0.0, {}

    def clock(self) -> float:
        return self.now

    def step(self, name: str, seconds, loss: float = 1.0):
        curve = list(seconds) if isinstance(seconds, (list, tuple)) else [seconds]

        def run() -> torch.Tensor:
            taken = self.steps.get(name, 0)
            self.now += curve[min(taken, len(curve) - 1)]
            self.steps[name] = taken + 1
            return torch.tensor(loss)
        return run


def test_time_steps_stops_early_when_the_gap_is_clear():
    fake = FakeDevice()
    seconds = time_steps({"fp32": fake.step("fp32", 0.1), "bf16": fake.step("bf16", 0.03)}, fake.clock, budget=3.0)
    assert seconds == pytest.approx({"fp32": 0.1, "bf16": 0.03})
    assert fake.steps == {"fp32": 3, "bf16": 3}  # two warm-up steps that agree and a round: 3.3x is clear
    assert fake.now < 0.5


def test_a_fourfold_gap_needs_one_round_only():
    fake = FakeDevice()
    seconds = time_steps({"fp32": fake.step("fp32", 0.05), "bf16": fake.step("bf16", 1.0)}, fake.clock)
    assert decide(seconds, CPU_ORDER) == "fp32" and fake.steps == {"fp32": 2, "bf16": 2}  # 0.05x: emulated bf16


def test_a_candidate_far_slower_in_its_warm_up_is_not_stepped_again_past_the_budget():
    fake = FakeDevice()
    seconds = time_steps({"fp32": fake.step("fp32", 0.5), "bf16": fake.step("bf16", 5.0)}, fake.clock, budget=3.0)
    assert decide(seconds, CPU_ORDER) == "fp32" and fake.steps == {"fp32": 2, "bf16": 1}
    fake = FakeDevice()  # a close call past the budget is decided by the warm-ups: the budget is kept
    seconds = time_steps({"fp32": fake.step("fp32", 2.0), "bf16": fake.step("bf16", 1.5)}, fake.clock, budget=3.0)
    assert decide(seconds, CPU_ORDER) == "bf16" and fake.steps == {"fp32": 1, "bf16": 1}


def test_warm_up_lasts_until_two_consecutive_steps_agree():
    fake = FakeDevice()
    times = step_race.warm_up(fake.step("bf16", [0.5, 0.3, 0.1, 0.07, 0.065]), fake.clock, deadline=10.0)
    assert times == pytest.approx([0.5, 0.3, 0.1, 0.07, 0.065])  # 0.07 and 0.065 agree within 15%
    fake = FakeDevice()  # never settling: at most WARMUP_MAX_STEPS
    times = step_race.warm_up(fake.step("bf16", [0.4, 0.2, 0.4, 0.2, 0.4, 0.2, 0.4, 0.2]), fake.clock, deadline=10.0)
    assert len(times) == step_race.WARMUP_MAX_STEPS
    fake = FakeDevice()  # past its deadline it stops, settled or not
    assert step_race.warm_up(fake.step("bf16", [0.5, 0.3, 0.1]), fake.clock, deadline=0.6) == pytest.approx([0.5, 0.3])


def test_a_step_already_taken_at_the_slice_counts_as_the_first_of_the_warm_up():
    # The probe's ladder steps each candidate once at the slice it then races at: emulated bf16 at 16 images
    # is 0.65 CPU s a step, and stepping it a third time put cifar10-quick's probe over its 3 s.
    fake = FakeDevice()
    seconds = time_steps({"fp32": fake.step("fp32", 0.05), "bf16": fake.step("bf16", 0.65)}, fake.clock, budget=3.0,
                         taken={"fp32": 0.055, "bf16": 0.66})
    assert decide(seconds, CPU_ORDER) == "fp32" and fake.steps == {"fp32": 1, "bf16": 1}
    fake = FakeDevice()  # a taken first step that was slow (kernels being created) does not settle it
    times = step_race.warm_up(fake.step("bf16", [0.1, 0.09]), fake.clock, deadline=10.0, taken=[0.3])
    assert times == pytest.approx([0.3, 0.1, 0.09])


def test_a_candidate_whose_kernels_warm_up_slowly_is_timed_once_warm():
    # bf16 steps slow for three steps, then 2x fp32. After one warm-up step and two rounds, bf16 measured
    # 0.42x and the answer looked clear (fp32); a short probe once put bf16 at 0.54x fp32 on the machine
    # where whole runs were 1.63x faster.
    fake = FakeDevice()
    seconds = time_steps({"fp32": fake.step("fp32", [0.15, 0.13, 0.125]),
                          "bf16": fake.step("bf16", [0.5, 0.4, 0.3, 0.066, 0.062])}, fake.clock, budget=3.0)
    assert decide(seconds, CPU_ORDER) == "bf16"
    assert seconds["bf16"] == pytest.approx(0.062) and seconds["fp32"] == pytest.approx(0.125)
    assert fake.now <= 3.0


def test_the_probe_times_a_slice_of_the_batch_only_when_a_full_step_would_not_fit():
    def step_seconds(per_image: float, overhead: float = 0.01):
        asked = []

        def seconds(n: int) -> float:
            asked.append(n)
            return overhead + per_image * n
        return seconds, asked

    small, asked = step_seconds(0.0005)  # convnet width 8 at batch 256: 0.14 s a step
    assert step_race.probe_batch(256, small, target_seconds=0.3) == 256 and asked == [16, 64]
    big, asked = step_seconds(0.02)  # custom_resnet on one core: 10 s a step at batch 512
    assert step_race.probe_batch(512, big, target_seconds=0.3) == 16 and asked == [16]
    middle, _ = step_seconds(0.004)
    assert step_race.probe_batch(512, middle, target_seconds=0.3) == 64  # 64 fits, 256 would not
    assert step_race.probe_batch(8, big, target_seconds=0.01) == 8  # a batch under the first slice: as it is


def test_the_scout_puts_a_candidate_far_slower_at_two_images_out_of_the_race():
    # Emulated bf16 (a CPU without AVX512-BF16): resnet18 at 2 images took 1.6 CPU s a step against 0.21 in
    # fp32 at 2 threads. One such step used over a quarter of the budget: it is not taken again.
    fake = FakeDevice()
    seconds = step_race.scout({"fp32": fake.step("fp32", [0.31, 0.21]), "bf16": fake.step("bf16", 1.6)}, fake.clock,
                              budget=6.0)
    assert seconds == pytest.approx({"fp32": 0.21, "bf16": 1.6}) and fake.steps == {"fp32": 2, "bf16": 1}
    assert step_race.hopeless(seconds, CPU_ORDER) == ["bf16"]
    fake = FakeDevice()  # fastnet: cheap enough for its best of two, and still 9.5x slower
    seconds = step_race.scout({"fp32": fake.step("fp32", [0.09, 0.042]), "bf16": fake.step("bf16", [0.42, 0.40])},
                              fake.clock, budget=6.0)
    assert fake.steps == {"fp32": 2, "bf16": 2} and step_race.hopeless(seconds, CPU_ORDER) == ["bf16"]


@pytest.mark.parametrize("bf16, why", [
    ([0.065, 0.059], "convnet width 16 emulated: 3.1x slower at 2 images (8.6x at 16): left to the race"),
    ([0.3, 0.02], "a first step that creates the kernels, then as fast as fp32 (AMX at a new shape)"),
    ([0.015, 0.012], "faster than fp32"),
])
def test_the_scout_leaves_everything_else_to_the_race(bf16, why):
    fake = FakeDevice()
    seconds = step_race.scout({"fp32": fake.step("fp32", [0.037, 0.019]), "bf16": fake.step("bf16", bf16)}, fake.clock,
                              budget=6.0)
    assert fake.steps == {"fp32": 2, "bf16": 2} and step_race.hopeless(seconds, CPU_ORDER) == [], why


@pytest.mark.parametrize("seconds, budget_left, race", [
    ({"fp32": 0.25, "bf16": 0.9}, 6.0, False),  # 3.6x, but a 16-image bf16 step (~7 s) would not fit: no race
    ({"fp32": 0.25, "bf16": 0.9}, 10.0, True),
    ({"fp32": 0.1, "bf16": 0.07}, 3.0, True),  # bf16 faster (AMX): raced at 16 images or more, as before
    ({"fp32": 0.019, "bf16": 0.09}, 6.0, False),  # hopeless: 4.7x
    ({"fp32": None, "bf16": 0.05}, 6.0, True),  # fp32 failed at 2 images: the race judges
])
def test_the_race_follows_the_scout_only_where_it_can_fit_and_decide_something(seconds, budget_left, race):
    assert step_race.worth_a_race(seconds, CPU_ORDER, 2, budget_left) == race


def test_a_step_that_fails_at_the_scout_is_left_for_the_race_to_judge():
    fake = FakeDevice()

    def broken() -> torch.Tensor:
        raise RuntimeError("expected more than 1 value per channel")

    seconds = step_race.scout({"fp32": broken, "bf16": fake.step("bf16", 5.0)}, fake.clock, budget=1.0)
    assert seconds == {"fp32": None, "bf16": pytest.approx(5.0)} and step_race.hopeless(seconds, CPU_ORDER) == []
    seconds = step_race.scout({"fp32": fake.step("fp32", 0.1), "bf16": broken}, fake.clock, budget=1.0)
    assert seconds == {"fp32": pytest.approx(0.1), "bf16": None} and step_race.hopeless(seconds, CPU_ORDER) == []


@pytest.mark.parametrize("hopeless_factor, raced", [(0.0, False), (float("inf"), True)])
def test_the_real_probe_stops_at_the_scout_only_when_a_candidate_is_out(cache, monkeypatch, hopeless_factor, raced):
    # HOPELESS 0: any measured candidate is out at the scout, as emulated bf16 is; inf: none is, and it races.
    monkeypatch.setattr(step_race, "HOPELESS", hopeless_factor)
    cfg = load_config("smoke", [])
    timings = autotune.measure_precisions(cfg.model, cfg.optim, (64, 1, 8, 8), 10, CPU, True, CPU_ORDER,
                                          budget_seconds=0.3)
    assert all(seconds > 0 for seconds in timings.seconds_per_step.values())
    assert (timings.batch > step_race.SCOUT_SLICE) == raced, timings


def test_time_steps_keeps_measuring_a_close_call_within_its_budget():
    fake = FakeDevice()
    seconds = time_steps({"fp32": fake.step("fp32", 0.010), "bf16": fake.step("bf16", 0.0091)}, fake.clock,
                         budget=0.5)
    assert seconds == pytest.approx({"fp32": 0.010, "bf16": 0.0091})
    assert fake.steps["fp32"] > 3  # 1.10x sits on the margin: more than the minimum of rounds...
    assert fake.now <= 0.5 + 0.02  # ...but never past the budget by more than one round


def test_a_candidate_with_a_non_finite_loss_or_a_failing_step_is_out():
    fake = FakeDevice()

    def broken() -> torch.Tensor:
        raise RuntimeError("no bf16 kernel for this op")

    seconds = time_steps({"fp32": fake.step("fp32", 0.1), "bf16": fake.step("bf16", 0.01, loss=float("nan")),
                          "fp16": broken}, fake.clock)
    assert seconds == {"fp32": pytest.approx(0.1), "bf16": None, "fp16": None}
    assert decide(seconds, CUDA_ORDER) == "fp32"


def test_the_real_measurement_leaves_every_rng_as_it_was(cache):
    cfg = load_config("smoke", [])
    torch.manual_seed(7)
    before = torch.get_rng_state()
    timings = autotune.measure_precisions(cfg.model, cfg.optim, (8, 1, 8, 8), 10, CPU, True, CPU_ORDER,
                                          budget_seconds=0.3)
    assert torch.equal(torch.get_rng_state(), before)
    assert timings.seconds_per_step["fp32"] > 0 and set(timings.seconds_per_step) == set(CPU_ORDER)
    assert timings.batch in (step_race.SCOUT_SLICE, 8)  # 2 where the scout put bf16 out (emulated bf16)


def test_a_batch_too_big_for_the_budget_is_probed_on_a_slice_and_the_line_says_so(cache, measured):
    cfg = load_config("smoke", [])
    timings = autotune.measure_precisions(cfg.model, cfg.optim, (2048, 1, 28, 28), 10, CPU, True, CPU_ORDER,
                                          budget_seconds=0.02)
    assert timings.seconds_per_step["fp32"] > 0 and timings.batch < 2048
    assert timings.batch == step_race.SCOUT_SLICE or timings.batch >= step_race.FIRST_SLICE
    measured({"fp32": 1.0, "bf16": 0.5}, batch=32)
    choice = choose_precision(cfg.model, cfg.optim, (512, 1, 28, 28), 10, CPU, True)
    assert choice.line() == "precision: bf16 (measured 2.00x fp32 on this CPU, 0.4 s, timing 32 of the batch's " \
        "512 images a step)"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_probe_times_the_whole_batch_once_each_candidate_is_warm(cache):
    # On an H100 the first step of each candidate is cuDNN's kernel search; a probe that counted it sliced
    # fastnet's batch of 1024 to 16 images and measured bf16 at 0.01x fp32.
    cfg = load_config("fast", [])
    device = torch.device("cuda")
    order = autotune.candidates(device)
    timings = autotune.measure_precisions(cfg.model, cfg.optim, (1024, 3, 32, 32), 10, device, True, order)
    assert timings.batch == 1024
    ratios = step_race.speedups(timings.seconds_per_step, "fp32")
    assert all(0.4 < ratios[name] < 2.5 for name in order), timings


# ------------------------------------------------------------------------------------------ forced and cached

def test_a_forced_answer_is_taken_without_measuring(cache, measured, monkeypatch):
    calls = measured({"fp32": 1.0, "bf16": 0.5})
    cfg = load_config("smoke", [])
    for forced in ("fp32", "bf16"):
        monkeypatch.setenv("CIFARLAB_CPU_AUTO_PRECISION", forced)
        choice = choose_precision(cfg.model, cfg.optim, (64, 1, 16, 16), 10, CPU, True)
        assert choice == PrecisionChoice(forced, f"CIFARLAB_CPU_AUTO_PRECISION={forced}")
        assert resolve_precision("auto", CPU).name == forced
    assert calls == []
    monkeypatch.setenv("CIFARLAB_CPU_AUTO_PRECISION", "fp16")
    with pytest.raises(UserError, match="CIFARLAB_CPU_AUTO_PRECISION must be bf16 or fp32"):
        choose_precision(cfg.model, cfg.optim, (64, 1, 16, 16), 10, CPU, True)


def test_unmeasured_auto_on_a_cpu_is_fp32_and_fp16_falls_back_with_a_warning(cache):
    assert resolve_precision("auto", CPU).name == "fp32"  # no model to time: a checkpoint's fallback
    with pytest.warns(UserWarning, match="fp16 needs a CUDA device; this CPU takes precision auto instead"):
        precision = resolve_precision("fp16", CPU)
    assert precision.name == "fp32" and precision.make_scaler() is None


def test_a_second_choice_for_the_same_key_is_read_from_the_cache(cache, measured):
    calls = measured({"fp32": 1.0, "bf16": 0.6})
    cfg = load_config("smoke", [])
    first = choose_precision(cfg.model, cfg.optim, (64, 1, 16, 16), 10, CPU, True)
    again = choose_precision(cfg.model, cfg.optim, (64, 1, 16, 16), 10, CPU, True)
    other_batch = choose_precision(cfg.model, cfg.optim, (32, 1, 16, 16), 10, CPU, True)
    assert first.name == again.name == other_batch.name == "bf16" and first.reason.startswith("measured 1.67x fp32")
    assert again.reason == f"{first.reason}; cached in {cache}"
    assert calls == [(64, 1, 16, 16), (32, 1, 16, 16)]  # another batch shape is another key
    assert len(list(cache.glob("precision-*.json"))) == 2 and not list(cache.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["garbage", "other key", "bad name", "unreadable", "a fifo"])
def test_a_damaged_cache_file_is_measured_again_never_an_error(cache, measured, damage):
    calls = measured({"fp32": 1.0, "bf16": 2.0})
    cfg = load_config("smoke", [])
    choose_precision(cfg.model, cfg.optim, (64, 1, 16, 16), 10, CPU, True)
    (path,) = cache.glob("precision-*.json")
    entry = json.loads(path.read_text())
    if damage == "garbage":
        path.write_bytes(b"\xff\x00{not json")
    elif damage == "other key":
        path.write_text(json.dumps({**entry, "key": {**entry["key"], "torch": "0.1"}, "name": "bf16"}))
    elif damage == "bad name":
        path.write_text(json.dumps({**entry, "name": "int8"}))
    elif damage == "unreadable":
        path.unlink()
        path.mkdir()
    else:  # round 4: reading it blocked the run forever, waiting for a writer
        path.unlink()
        os.mkfifo(path)
    choice = _within(30, lambda: choose_precision(cfg.model, cfg.optim, (64, 1, 16, 16), 10, CPU, True), path)
    assert choice.name == "fp32" and choice.reason.startswith("measured bf16 0.50x fp32") and len(calls) == 2


def test_an_answer_measured_on_a_busy_machine_is_measured_again_once_it_is_quiet(cache, measured, monkeypatch):
    """A neighbour made bf16 look 0.03x fp32 on an AMX Xeon (trainer/machine_load.py): that run takes fp32,
    but the machine's cached answer must not be the busy one."""
    calls = measured({"fp32": 1.0, "bf16": 30.0}, others_share=0.48)
    cfg = load_config("smoke", [])
    busy = choose_precision(cfg.model, cfg.optim, (64, 1, 16, 16), 10, CPU, True)
    assert busy.name == "fp32" and busy.reason == (
        "measured bf16 0.03x fp32 on this CPU, 0.4 s, while other processes used 48% of the CPU: measured again "
        "once the machine is quiet")
    (path,) = cache.glob("precision-*.json")
    assert json.loads(path.read_text())["busy"] is True
    monkeypatch.setattr(machine_load, "others_share_now", lambda: 0.6)  # still busy: the busy answer stands
    assert choose_precision(cfg.model, cfg.optim, (64, 1, 16, 16), 10, CPU, True).name == "fp32" and len(calls) == 1
    monkeypatch.setattr(machine_load, "others_share_now", lambda: 0.02)  # quiet: measured again, and kept
    measured({"fp32": 1.0, "bf16": 0.7}, others_share=0.01)
    assert choose_precision(cfg.model, cfg.optim, (64, 1, 16, 16), 10, CPU, True).name == "bf16"
    entry = json.loads(path.read_text())
    assert entry["busy"] is False and entry["reason"] == "measured 1.43x fp32 on this CPU, 0.4 s"
    monkeypatch.setattr(machine_load, "others_share_now", lambda: pytest.fail("a quiet answer needs no look"))
    assert choose_precision(cfg.model, cfg.optim, (64, 1, 16, 16), 10, CPU, True).name == "bf16"


def test_a_cache_entry_whose_busy_mark_is_not_a_boolean_is_measured_again(cache, measured):
    calls = measured({"fp32": 1.0, "bf16": 0.5})
    cfg = load_config("smoke", [])
    choose_precision(cfg.model, cfg.optim, (64, 1, 16, 16), 10, CPU, True)
    (path,) = cache.glob("precision-*.json")
    path.write_text(json.dumps({**json.loads(path.read_text()), "busy": "no"}))
    choose_precision(cfg.model, cfg.optim, (64, 1, 16, 16), 10, CPU, True)
    assert len(calls) == 2


def test_the_share_of_the_machine_other_processes_used_is_its_busy_time_less_ours(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  1000 50 300 9000 20 5 5 40 0 0\ncpu0 500 25 150 4500 10 2 3 20 0 0\n")
    ticks = os.sysconf("SC_CLK_TCK")
    start = machine_load.mark(str(stat))
    assert start.machine_busy == pytest.approx((1000 + 50 + 300 + 5 + 5 + 40) / ticks)  # idle, iowait, guest: not busy
    end = machine_load.CpuMark(start.machine_busy + 1.5, start.ours + 0.5, start.wall + 1.0)
    assert machine_load.others_share(start, end, cores=2) == pytest.approx(0.5)  # 1.0 of 2 CPU-seconds
    assert machine_load.others_share(start, machine_load.CpuMark(start.machine_busy + 0.4, start.ours + 0.5,
                                                                  start.wall + 1.0), cores=2) == 0.0
    assert machine_load.others_share(None, end) is None and machine_load.mark(str(tmp_path / "none")) is None
    stat.write_text("cpu  not numbers\n")
    assert machine_load.mark(str(stat)) is None
    assert machine_load.is_busy(0.25) and not machine_load.is_busy(0.2) and not machine_load.is_busy(None)


def _within(seconds: float, call, fifo):
    """call()'s result, or a failure if it is still waiting after `seconds` (then the FIFO is released)."""
    import threading

    box = []
    worker = threading.Thread(target=lambda: box.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        with open(fifo, "w"):  # lets a reader blocked on it go on
            pass
        pytest.fail(f"still waiting on {fifo} after {seconds} s")
    return box[0]


def test_an_unwritable_cache_folder_only_costs_a_measurement(tmp_path, monkeypatch, measured):
    monkeypatch.delenv("CIFARLAB_CPU_AUTO_PRECISION", raising=False)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(precision_cache.CACHE_ENV, str(tmp_path / "file"))  # its autotune/ cannot be made
    calls = measured({"fp32": 1.0, "bf16": 0.5})
    cfg = load_config("smoke", [])
    for _ in range(2):
        assert choose_precision(cfg.model, cfg.optim, (64, 1, 16, 16), 10, CPU, True).name == "bf16"
    assert len(calls) == 2


def test_the_cache_follows_xdg_cache_home_unless_cifarlab_cache_is_set(monkeypatch, tmp_path):
    monkeypatch.delenv(precision_cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert precision_cache.cache_dir() == tmp_path / "xdg" / "cifarlab" / "autotune"
    monkeypatch.setenv(precision_cache.CACHE_ENV, str(tmp_path / "mine"))
    assert precision_cache.cache_dir() == tmp_path / "mine" / "autotune"


# ------------------------------------------------------------------------------------------ runs

def test_a_run_records_its_choice_and_a_resume_keeps_it(cache, measured, tmp_path, capsys, monkeypatch):
    measured({"fp32": 1.0, "bf16": 0.7})
    # progress=lines: the choice is an informational line, which a quiet run (progress=none) leaves out
    run = cifarlab.train("smoke", [f"output.dir={tmp_path}", "train.epochs=1", *SMOKE, "output.progress=lines"])
    assert "precision: bf16 (measured 1.43x fp32 on this CPU, 0.4 s)" in capsys.readouterr().err.splitlines()
    config = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert config["train"]["precision"] == "bf16"  # a re-run of config.yaml trains in it again
    assert run.summary.precision == "bf16"
    assert run.summary.precision_source == "measured 1.43x fp32 on this CPU, 0.4 s"

    def refuse(*args, **kwargs):
        raise AssertionError("a resume measured again")

    monkeypatch.setattr(autotune, "measure_precisions", refuse)
    monkeypatch.setattr(autotune, "read_cached", refuse)
    resumed = cifarlab.resume(run.run_dir, epochs=2)
    assert resumed.summary.precision == "bf16" and resumed.summary.epochs_completed == 2
    assert resumed.summary.precision_source == run.summary.precision_source
    assert "precision: " not in capsys.readouterr().err


def test_an_explicit_precision_is_never_measured_or_overridden(cache, measured, tmp_path, capsys):
    calls = measured({"fp32": 1.0, "bf16": 0.1})
    run = cifarlab.train("smoke", [f"output.dir={tmp_path}", "train.epochs=1", "train.precision=fp32", *SMOKE])
    assert run.summary.precision == "fp32" and run.summary.precision_source == "train.precision=fp32"
    assert calls == [] and "precision: " not in capsys.readouterr().err


def test_fp16_on_a_cpu_takes_the_measured_answer(cache, measured, tmp_path, capsys):
    measured({"fp32": 1.0, "bf16": 0.5})
    with pytest.warns(UserWarning, match="fp16 needs a CUDA device"):
        run = cifarlab.train("smoke", [f"output.dir={tmp_path}", "train.epochs=1", "train.precision=fp16", *SMOKE])
    assert run.summary.precision == "bf16"
    assert run.summary.precision_source.startswith("train.precision=fp16 needs CUDA; measured 2.00x fp32")


def test_lr_find_takes_the_answer_a_run_would(cache, measured, tmp_path, capsys):
    calls = measured({"fp32": 1.0, "bf16": 2.0})
    assert main(["lr-find", "smoke", "lr_find.num_iter=5", "train.threads=1", f"output.dir={tmp_path}",
                 "--out", str(tmp_path / "lr")]) == 0
    assert "precision: fp32 (measured bf16 0.50x fp32 on this CPU, 0.4 s)" in capsys.readouterr().err
    assert calls == [(64, 3, 16, 16)]  # smoke's batch and images: the shape the run trains at


def test_a_run_from_before_measurement_resumes_in_the_precision_its_checkpoint_records():
    cfg = load_config("smoke", [])
    assert cfg.train.precision == "auto"
    assert recorded_precision(cfg, "bf16").train.precision == "bf16"
    assert recorded_precision(cfg, None).train.precision == "auto"
    explicit = load_config("smoke", ["train.precision=fp32"])
    assert recorded_precision(explicit, "bf16").train.precision == "fp32"


def test_summary_json_carries_how_the_precision_was_chosen_only_when_known():
    from cifarlab.run.summary import Summary

    assert Summary(precision="bf16", precision_source="train.precision=bf16").to_json()["precision_source"] == \
        "train.precision=bf16"
    assert "precision_source" not in Summary().to_json()  # optional: runs from before it have none
