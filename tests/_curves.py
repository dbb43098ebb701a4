"""Test helpers: hand-made range-test curves with known answers."""
import numpy as np


def hand_made_curve(seed=0):
    """Plateau at 2.3 with noise, a sigmoid descent centred at lr 1e-2 (in log lr), then divergence."""
    lrs = np.geomspace(1e-6, 1.0, 120)
    x = np.log10(lrs)
    loss = 2.3 - 1.8 / (1 + np.exp(-(x + 2) * 3)) + 4 * np.clip(x + 1, 0, None) ** 2
    rng = np.random.default_rng(seed)
    loss = loss + rng.normal(0, 0.004, size=len(lrs))
    return lrs, loss


def calibration_then_descent(seed=0, noise=0.05):
    """Issue 9's custom-ResNet curve: loss 4.95 from over-confident logits falls to ln(10) at lr ~1e-5
    (calibration, nothing learnt), stays there, the real descent to 0.6 is centred at 1e-3, and the loss
    diverges from ~1e-2 on. Returns (lrs, noisy losses, noise-free losses)."""
    lrs = np.geomspace(1e-7, 10.0, 200)
    x = np.log10(lrs)
    clean = (2.3 + 2.65 / (1 + np.exp((x + 5) * 6))  # calibration drop, steeper than the real descent
             - 1.7 / (1 + np.exp(-(x + 3) * 2.5))
             + 3 * np.clip(x + 2, 0, None) ** 2)
    noisy = clean + np.random.default_rng(seed).normal(0, noise, size=len(lrs))
    return lrs, noisy, clean


def ema(losses, smooth=0.05):
    out, avg = [], 0.0
    for step, value in enumerate(losses, start=1):
        avg = (1 - smooth) * avg + smooth * value
        out.append(avg / (1 - (1 - smooth) ** step))
    return np.array(out)
