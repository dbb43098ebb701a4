"""Loop overhead: cifarlab's `fit` and `train_epoch` vs a bare loop over the same on-device batches.

Same model, precision, optimizer and DeviceLoader batches; only the loop differs. cifarlab's per-step
extras are the LR schedule step, two device-side metric meters, the non-finite-loss check and the
callbacks (the loop syncs every `log_every_steps`); `fit` adds the epoch end: evaluation of a
one-batch test split, metrics.csv and a checkpoint. Runs alternate (bare, cifarlab, ...).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
from common import bare_epoch, bench_config, median_ratio, paired, spread, timed

from cifarlab.data.prepare import load_data
from cifarlab.runtime import make_runtime
from cifarlab.trainer.build import build_state, default_callbacks
from cifarlab.trainer.loop import fit, train_epoch


def cifarlab_fit(state, callbacks) -> int:
    """One epoch of `fit`, evaluation and checkpoint included."""
    state.progress.epoch, state.progress.batch_in_epoch, state.stop = 0, 0, None
    state.progress.history.clear()
    fit(state, callbacks)
    return state.steps_per_epoch * state.objects.train_loader.batch_size


def cifarlab_epoch(state, callbacks) -> int:
    state.progress.batch_in_epoch = 0
    train_epoch(state, callbacks)
    return state.steps_per_epoch * state.objects.train_loader.batch_size


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--width", type=int, default=16, help="convnet width")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    cfg = bench_config(args.model, args.width, args.batch_size, args.steps)
    runtime = make_runtime(cfg.train, cfg.seed)
    dataset = load_data(cfg.data)
    results = {}
    with TemporaryDirectory() as tmp:
        state = build_state(cfg, runtime, dataset, Path(tmp))
        callbacks = default_callbacks(cfg, Path(tmp), is_main=True)
        def bare():
            return timed(lambda: bare_epoch(state, state.objects.train_loader.batches(0)))

        bare()  # warm-up
        for name, run in (("train_epoch", cifarlab_epoch), ("fit", cifarlab_fit)):
            run(state, callbacks)  # warm-up
            ours, base = paired(lambda: timed(lambda: run(state, callbacks)), bare, args.repeats)
            slower = 100 * (1 / median_ratio(ours, base) - 1)
            results[name] = {"cifarlab": ours, "bare": base, "slower_percent": slower}
            print(f"loop overhead, cifarlab {name} vs bare loop ({args.model} width {args.width}, batch "
                  f"{args.batch_size}, {args.steps} steps, {runtime.precision.name}, {args.repeats} pairs):\n"
                  f"  cifarlab {name}: {spread(ours)} img/s\n  bare loop: {spread(base)} img/s\n"
                  f"  cifarlab is {slower:+.1f}% slower (median of paired ratios; target <= 3%)", flush=True)
    return results


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
