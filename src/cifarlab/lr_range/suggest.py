"""Reading a learning rate off a range-test curve: the suggestion rules, on plain arrays.

`minimum` (the default) takes the lr at the minimum of the raw loss smoothed *without lag*: a running
median of 5 (divergence spikes) followed by a Gaussian over log10(lr) centred on each point. That is the
largest lr that still lowers the loss over the few steps the sweep spends at each lr, Smith's upper bound
for a cyclic schedule (arXiv:1506.01186, arXiv:1708.07120); in bench/lr_auto.py, near the best OneCycle peak.

Why not the slope rules. `steepest` (largest negative slope of the smoothed loss against log lr, before
its minimum) is fooled by a model whose first drop is calibration: the custom ResNet starts at loss 4.95
with over-confident logits, falls to ~ln(10) at tiny lrs without learning anything, and `steepest` lands
there, two decades below the lr that trains well (in the custom-ResNet course experiment: 1.57e-5 instead
of ~2.5e-3, 91.2% instead of 94.5%). fastai's `valley` follows the longest decreasing run, which starts
in that same calibration drop.
Both also read the causal EMA the sweep keeps for its divergence check, and an EMA of weight `smooth`
lags by ~(1 - smooth) / smooth points: 19 points at smooth = 0.05, 1.3 decades of a 100-step sweep over
1e-6..10, so its minimum and slopes sit right of the loss they summarise. The minimum of the centred
curve does not depend on where the descent started, nor on the slope's noise.

That experiment's figures fit this, if its loss minimum (~1e-2, custom ResNet, 200 steps over 1e-6..10, i.e. 28.6
steps per decade and an EMA lag of ~0.66 decade) was read off the EMA curve: shifted back by the lag it
is ~2.2e-3, next to the 2.54e-3 found by hand (94.52%). bench/lr_auto.py compares the rules against an
lr grid on real data.
"""
from __future__ import annotations

from typing import Literal, Optional

import numpy as np

Rule = Literal["minimum", "steepest", "valley"]
RULES: tuple[str, ...] = ("minimum", "steepest", "valley")

# Width (standard deviation, in decades of lr) of the centred Gaussian smoothing for `minimum`: wide
# enough to average ~5 steps of a 100-step sweep over 7 decades, narrow next to a ~1-decade descent.
CENTRED_SIGMA_DECADES = 0.2
MEDIAN_POINTS = 5
# The descent starts where the smoothed loss has fallen by this fraction of its total drop.
DESCENT_START_FRACTION = 0.1


def _head(n: int) -> int:
    """Points skipped at the start: the first ~10 % are dominated by smoothing warm-up and noise."""
    return n // 10


def centred_smooth(lrs, losses, sigma_decades: float = CENTRED_SIGMA_DECADES) -> np.ndarray:
    """The raw losses smoothed without lag: running median of 5, then a Gaussian over log10(lr).

    The weights are normalised per point, so the ends (half a window) are unbiased averages too; the
    spacing of the lrs may be uneven (step_mode linear)."""
    loss = np.asarray(losses, dtype=np.float64)
    x = np.log10(np.asarray(lrs, dtype=np.float64))
    half = MEDIAN_POINTS // 2
    median = np.array([np.median(loss[max(0, i - half):i + half + 1]) for i in range(len(loss))])
    weights = np.exp(-0.5 * ((x[:, None] - x[None, :]) / sigma_decades) ** 2)
    return weights @ median / weights.sum(axis=1)


def minimum_index(lrs, losses) -> Optional[int]:
    """Index of the minimum of the centred smoothing of the raw losses; None when the curve does not
    come down (minimum in the skipped head) or is still coming down at the last lr (end_lr too low)."""
    if len(losses) < 5:
        return None
    smooth = centred_smooth(lrs, losses)
    index = int(np.argmin(smooth))
    still_falling = index == len(smooth) - 1
    no_descent = index <= _head(len(smooth)) or smooth[index] >= smooth[_head(len(smooth))]
    return None if still_falling or no_descent else index


def steepest_index(lrs, smoothed) -> Optional[int]:
    """Index of the most negative slope d(loss)/d(log lr), between the skipped head and the minimum.

    torch-lr-finder takes `np.gradient(losses)` against the sample index, i.e. against raw lr in linear
    mode, over the whole curve, so on noisy curves its steepest point can lie past the minimum; we take
    the slope against log(lr), skip the first 10 % and stop at the minimum."""
    loss = np.asarray(smoothed, dtype=np.float64)
    log_lr = np.log(np.asarray(lrs, dtype=np.float64))
    if len(loss) < 3:
        return None
    end = int(np.argmin(loss)) + 1  # nothing past the minimum: that is the diverging side
    start = _head(len(loss))
    if end - start < 2:
        return None
    slope = np.gradient(loss, log_lr)[start:end]
    index = int(np.argmin(slope))
    return start + index if slope[index] < 0 else None


def valley_index(lrs, smoothed) -> Optional[int]:
    """fastai's `valley` rule (fastai/callback/schedule.py, from ESRI's suggester), our implementation.

    Find the longest strictly decreasing subsequence of the loss (not necessarily contiguous); with
    `end` its last index and `length` its length, fastai sets `start = end - length` and returns
    `start + int(length / 3) + int(length / 6)`, about half-way into the valley (its docs say "roughly
    2/3"). fastai applies it to losses[num_it // 10 : -5]; we skip the same head, and no tail because our
    curve stops at the divergence point.
    """
    loss = np.asarray(smoothed, dtype=np.float64)
    head = _head(len(loss))
    loss = loss[head:]
    n = len(loss)
    if n < 2:
        return None
    run = np.ones(n, dtype=np.int64)  # run[i]: longest decreasing subsequence ending at i
    for i in range(1, n):
        higher = loss[:i] > loss[i]
        if higher.any():
            run[i] = run[:i][higher].max() + 1
    end = int(np.argmax(run))  # first index of the longest run, as fastai's loop picks it
    length = int(run[end])
    if length < 2:
        return None
    third = length / 3
    start = max(end - length, 0)  # fastai's start can be -1 when the run begins at index 0
    return head + min(start + int(third) + int(third / 2), n - 1)


def descent_start_index(smoothed) -> Optional[int]:
    """Index where the smoothed loss has fallen by 10 % of its total drop (after the skipped head)."""
    loss = np.asarray(smoothed, dtype=np.float64)
    head = _head(len(loss))
    if len(loss) - head < 2:
        return None
    bottom = int(np.argmin(loss))
    drop = loss[head] - loss[bottom]
    if bottom <= head or drop <= 0:
        return None
    below = np.nonzero(loss[head:bottom + 1] < loss[head] - DESCENT_START_FRACTION * drop)[0]
    return head + int(below[0])


def suggest_index(rule: str, lrs, losses, smoothed) -> Optional[int]:
    """The index a rule picks: `minimum` reads the raw losses (it smooths them itself, centred), the
    slope rules the sweep's EMA-smoothed curve, as their reference implementations do."""
    if not len(lrs):
        return None
    if rule == "minimum":
        return minimum_index(lrs, losses)
    return steepest_index(lrs, smoothed) if rule == "steepest" else valley_index(lrs, smoothed)
