"""The loop's per-step loss/accuracy record: right sums, the same sums wherever the syncs fall, the first
non-finite step found, and no host sync while recording."""
import math

import pytest
import torch

from cifarlab.trainer.metrics import StepMetrics
from cifarlab.trainer.syncs import SyncCounter

CPU = torch.device("cpu")


def make_steps(count: int, batch: int = 8, classes: int = 5, bad_at=()):
    """(loss, logits, labels, lr, step) for `count` steps; steps in `bad_at` (1-based) have a NaN/inf loss."""
    generator = torch.Generator().manual_seed(0)
    steps = []
    for step in range(1, count + 1):
        logits = torch.randn(batch, classes, generator=generator)
        labels = torch.randint(0, classes, (batch,), generator=generator)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        if step in bad_at:
            loss = loss * (float("nan") if step % 2 else float("inf"))
        steps.append((loss, logits, labels, 0.1 * step, step))
    return steps


def reference(steps) -> tuple[float, float]:
    loss_sum = sum(float(loss) * len(labels) for loss, _, labels, _, _ in steps)
    correct = sum(int((logits.argmax(1) == labels).sum()) for _, logits, labels, _, _ in steps)
    images = sum(len(labels) for _, _, labels, _, _ in steps)
    return loss_sum / images, correct / images


def test_window_and_epoch_means_are_the_per_step_means_weighted_by_batch_size():
    steps = make_steps(7) + [(*make_steps(1, batch=3)[0][:3], 0.8, 8)]  # a ragged last batch
    metrics = StepMetrics(CPU, capacity=4)  # more steps than rows: the buffer grows
    for step in steps[:5]:
        metrics.record(*step)
    assert metrics.read_window() == pytest.approx(reference(steps[:5]), abs=1e-12)
    for step in steps[5:]:
        metrics.record(*step)
    assert metrics.read_window() == pytest.approx(reference(steps[5:]), abs=1e-12)
    assert metrics.read_epoch() == pytest.approx(reference(steps), abs=1e-12)
    assert all(math.isnan(x) for x in metrics.read_epoch())  # a new epoch has no images yet


@pytest.mark.parametrize("flush_after", [(), (1,), (3, 4), (1, 2, 3, 4, 5, 6)])
def test_sums_are_bitwise_the_same_wherever_the_syncs_and_a_resume_fall(flush_after):
    """A checkpoint, a window or an interruption may sync at any step: the epoch's numbers must not move."""
    steps = make_steps(7)
    plain = StepMetrics(CPU)
    for step in steps:
        plain.record(*step)
    expected = plain.read_epoch()

    metrics = StepMetrics(CPU)
    for index, step in enumerate(steps, start=1):
        metrics.record(*step)
        if index in flush_after:
            saved = metrics.state_dict()  # as a mid-epoch checkpoint does
            metrics = StepMetrics(CPU)  # ... and a resumed process
            metrics.load_state_dict(saved)
    assert metrics.read_epoch() == expected


def test_the_first_nonfinite_loss_is_found_with_its_step_and_lr():
    metrics = StepMetrics(CPU)
    for step in make_steps(6, bad_at=(4, 5)):
        metrics.record(*step)
    assert metrics.first_nonfinite is None  # nothing read yet: recording never looks at the values
    metrics.flush()
    assert metrics.first_nonfinite == {"step": 4, "lr": pytest.approx(0.4)}
    for step in make_steps(2, bad_at=(1,)):  # a later bad step does not replace the first
        metrics.record(*step)
    metrics.flush()
    assert metrics.first_nonfinite["step"] == 4


def test_recording_makes_no_host_sync_even_when_the_buffer_grows():
    steps = make_steps(10)
    metrics = StepMetrics(CPU, capacity=2)
    with SyncCounter() as syncs:
        for step in steps:
            metrics.record(*step)
    assert syncs.total == 0, syncs.report()
    with SyncCounter() as syncs:
        metrics.flush()
    assert syncs.total == 1  # the one read, at the sync point
    assert metrics.read_epoch() == pytest.approx(reference(steps), abs=1e-12)
