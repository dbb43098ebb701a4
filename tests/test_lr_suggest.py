"""Suggestion rules on curves with known answers, including issue 9's two failure modes."""
import numpy as np
import pytest

from _curves import calibration_then_descent, ema, hand_made_curve
from cifarlab.errors import UserError
from cifarlab.lr_range.finder import summarize
from cifarlab.lr_range.suggest import minimum_index, steepest_index, valley_index


def test_slope_against_log_lr_finds_the_descent_where_raw_lr_slope_fails():
    lrs, loss = hand_made_curve()
    head, bottom = len(lrs) // 10, int(np.argmin(loss))
    raw = head + int(np.argmin(np.gradient(loss, lrs)[head:bottom + 1]))
    ours = steepest_index(lrs, loss)
    # The noise on the plateau over tiny lr steps dwarfs the real descent when divided by raw lr.
    assert lrs[raw] < 1e-4
    assert 3e-3 < lrs[ours] < 3e-2


def fastai_valley(losses):
    """fastai's loop, transcribed as the test oracle."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


@pytest.mark.parametrize("seed", range(5))
def test_valley_matches_fastai_rule(seed):
    lrs, loss = hand_made_curve(seed)
    loss = loss + np.random.default_rng(seed).normal(0, 0.05, size=len(loss))
    head = len(loss) // 10
    assert valley_index(lrs, loss) == head + fastai_valley(list(loss[head:]))
    assert 1e-4 < lrs[valley_index(lrs, loss)] < lrs[int(np.argmin(loss))]


def test_flat_curve_gives_no_suggestion_and_a_clear_error():
    lrs = np.geomspace(1e-5, 1e-3, 30)
    result = summarize(lrs, [1.0] * 30, [1.0] * 30)
    assert result.steepest_lr is None
    with pytest.raises(UserError, match="no descending part"):
        result.suggestion()


@pytest.mark.parametrize("seed", range(5))
def test_minimum_rule_lands_in_the_real_descent_not_the_calibration_drop(seed):
    lrs, noisy, clean = calibration_then_descent(seed)
    ideal = lrs[int(np.argmin(clean))]  # the bottom of the real descent, ~1e-2
    result = summarize(lrs, noisy, ema(noisy))
    assert result.steepest_lr < 1e-4  # the failure this curve reproduces: the calibration drop
    assert ideal / 3 < result.suggestion("minimum") < ideal * 3


@pytest.mark.parametrize("seed", range(5))
def test_minimum_rule_stays_before_the_minimum_where_noise_makes_the_tail_steepest(seed):
    # Past the minimum the loss jumps about (batch noise grows with the lr): a slope taken over the whole
    # raw curve, as torch-lr-finder takes it, finds its steepest fall there.
    lrs, _, clean = calibration_then_descent(seed, noise=0)
    bottom = int(np.argmin(clean))
    rng = np.random.default_rng(seed)
    spread = 0.03 + 1.5 * np.clip(np.log10(lrs / lrs[bottom]), 0, None)
    noisy = clean + rng.normal(0, 1, size=len(lrs)) * spread
    stop = bottom + 25  # the sweep stops at divergence
    lrs, noisy = lrs[:stop], noisy[:stop]
    whole_curve_steepest = int(np.argmin(np.gradient(noisy)))
    assert whole_curve_steepest > bottom
    lr = summarize(lrs, noisy, ema(noisy)).suggestion("minimum")
    assert lrs[bottom] / 3 < lr <= lrs[bottom] * 1.5


def test_minimum_rule_gives_none_while_the_loss_still_falls_at_end_lr():
    lrs, _, clean = calibration_then_descent()
    short = lrs < 3e-4  # the sweep ended inside the real descent
    assert minimum_index(lrs[short], clean[short]) is None
    with pytest.raises(UserError, match="widen lr_find.start_lr/end_lr"):
        summarize(lrs[short], clean[short], clean[short]).suggestion("minimum")
