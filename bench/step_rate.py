"""Bare training steps of convnet at several widths and precisions, alternating, at the run's own shape.

What the frontier's width choice rests on: images/s (wall) and images per CPU second of forward, loss,
backward and a Nesterov SGD step, on one fixed random batch (channels_last, as a run), after a warm-up.
The variants take turns (w8 fp32, w8 bf16, w16 fp32, ..., then again), so a change in machine load hits
them alike; each figure is the median (min-max) over `--repeats`.

    OMP_WAIT_POLICY=PASSIVE python bench/step_rate.py --widths 8 16 --precisions fp32 bf16
    OMP_WAIT_POLICY=PASSIVE python bench/step_rate.py --widths 16 --precisions bf16 bf32 --levers nchw compile fused
    OMP_WAIT_POLICY=PASSIVE python bench/step_rate.py --widths 8 16 8,16,48,96 --precisions fp32

A width is one number (convnet's `width`: stages of w, 2w, 4w, 8w channels) or four joined by commas
(its `widths`: each stage's channels).

`--levers` adds, for each width and precision, the same step with one change: `nchw` (contiguous tensors, not
channels_last), `compile` (torch.compile, default mode; its compile time is printed, not counted in the
rates) or `fused` (SGD's fused kernel). Precision `bf32` is fp32 tensors with oneDNN doing convolutions and
matmuls in bf16 inside (`torch.backends.mkldnn.*.fp32_precision = "bf16"`), where autocast's `bf16` casts.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from common import machine

from cifarlab.models.registry import create_model


def shape_option(width: str) -> dict:
    """`16` -> {width: 16}; `8,16,48,96` -> {widths: [8, 16, 48, 96]}; ValueError for anything else."""
    numbers = [int(part) for part in width.split(",")]
    if len(numbers) not in (1, 4):
        raise ValueError(width)
    return {"width": numbers[0]} if len(numbers) == 1 else {"widths": numbers}


def width_arg(text: str) -> str:
    try:
        shape_option(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a width is a whole number (16) or four joined by commas "
                                         f"(8,16,48,96), not {text!r}") from None
    return text


def make_step(width: str, precision: str, batch: int, shape: tuple[int, int, int], lever: str = ""):
    torch.manual_seed(0)
    model = create_model("convnet", num_classes=10, in_channels=shape[0], **shape_option(width))
    layout = torch.contiguous_format if lever == "nchw" else torch.channels_last
    model = model.to(memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                fused=lever == "fused" or None)
    inputs = torch.randn(batch, *shape).contiguous(memory_format=layout)
    labels = torch.randint(0, 10, (batch,))
    forward = torch.compile(model) if lever == "compile" else model
    inner = "bf16" if precision == "bf32" else "none"  # the global switch, set by every variant's step
    switch = hasattr(torch.backends.mkldnn, "conv")  # recent torch only: older ones have no such switch
    if precision == "bf32" and not switch:
        raise SystemExit(f"precision bf32 needs torch.backends.mkldnn.conv.fp32_precision (torch {torch.__version__})")

    def step() -> None:
        if switch:
            torch.backends.mkldnn.conv.fp32_precision = torch.backends.mkldnn.matmul.fp32_precision = inner
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(forward(inputs), labels, label_smoothing=0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", nargs="+", type=width_arg, default=["8", "16"],
                        help="convnet widths: 16, or four stages' channels as 8,16,48,96")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "bf32"])
    parser.add_argument("--levers", nargs="*", default=[], choices=["nchw", "compile", "fused"],
                        help="also time each width and precision with this one change (see above)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shape", type=int, nargs=3, default=[1, 28, 28], metavar=("C", "H", "W"))
    parser.add_argument("--steps", type=int, default=30, help="timed steps per turn")
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps before a variant's first turn")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}; batch {args.batch_size}, shape {tuple(args.shape)}", flush=True)
    variants = [(w, p, lever) for w in args.widths for p in args.precisions for lever in ["", *args.levers]]
    steps = {(w, p, lever): make_step(w, p, args.batch_size, tuple(args.shape), lever) for w, p, lever in variants}
    for v in variants:
        started = time.perf_counter()
        for _ in range(args.warmup):
            steps[v]()
        if v[2] == "compile":
            print(f"width {v[0]} {v[1]} compile: compiling and {args.warmup} warm-up steps took "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
    wall, cpu = {v: [] for v in variants}, {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                steps[v]()
            images = args.steps * args.batch_size
            wall[v].append(images / (time.perf_counter() - started))
            cpu[v].append(images / (time.process_time() - cpu_started))

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"

    print("| convnet width | precision | lever | img/s (wall) | img per CPU s |\n|---|---|---|---|---|")
    for v in variants:
        print(f"| {v[0]} | {v[1]} | {v[2] or '-'} | {spread(wall[v])} | {spread(cpu[v])} |")


if __name__ == "__main__":
    main()
