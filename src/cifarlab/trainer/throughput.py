"""What the hardware achieves: training FLOPs per image, the device's peak FLOP/s, and MFU.

MFU (model FLOPs utilisation; Chowdhery et al. 2022, arXiv:2204.02311, appendix B; nanoGPT prints it on
every log line) = the model's training FLOPs per image x images/s / the device's peak FLOP/s.

- FLOPs per image are counted once, by torch.utils.flop_counter.FlopCounterMode over one forward and
  backward pass of a copy of the model on a small batch: the matmuls and convolutions, a multiply-add
  counted as 2 FLOPs. Elementwise work (BatchNorm, ReLU, the optimizer) is left out, as MFU conventionally
  does, so MFU says how well the arithmetic the model must do keeps the device busy.
- The peak depends on the device:
  * a known NVIDIA GPU: its datasheet's dense tensor-core FLOP/s at the run's precision (fp32 runs use
    TF32, which `runtime.make_runtime` enables). Datasheet peaks are what MFU is reported against, so a
    figure here compares with nanoGPT's and the papers'.
  * a CPU, or a GPU not in the table: a short matmul probe at the run's precision and thread count (on a
    CPU timed in CPU seconds, see `probe_peak`), or in fp32 where that is faster (emulated bf16). A CPU's
    datasheet peak hangs on its clock under load and its vector units, which cannot be read reliably;
    what a matmul achieves on these cores is an honest denominator. MFU is then "of the measured matmul
    peak", and the summary says so (`peak_flops_source`).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import re
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Dense (no sparsity) peak FLOP/s from NVIDIA's datasheets: (name pattern, bf16/fp16 tensor, fp32 as TF32).
GPU_PEAKS = (
    (r"H200", 989.5e12, 494.7e12),
    (r"H100.*PCIE", 756.0e12, 378.0e12),
    (r"H100.*NVL", 835.5e12, 417.5e12),
    (r"H100", 989.5e12, 494.7e12),  # SXM
    (r"A100", 312.0e12, 156.0e12),
    (r"\bL4\b", 121.0e12, 60.0e12),
)
PROBE_SECONDS = 0.2  # total time of the matmul probe; the best repeat is kept (least disturbed by neighbours)
FLOP_COUNT_BATCH = 2  # images in the counting pass (BatchNorm needs more than one to train)


@dataclass(frozen=True)
class Speed:
    """The run's training FLOPs per image and its devices' peak: turns images/s into MFU."""
    flops_per_image: float  # forward + backward, multiply-add = 2
    peak_flops: float  # FLOP/s of one device at the run's precision
    peak_source: str  # e.g. "datasheet: NVIDIA H200, bf16" or "matmul probe: cpu, fp32, 2 threads"
    devices: int = 1  # processes training together (images/s counts them all)

    def mfu(self, images_per_second: float) -> float:
        """Achieved FLOP/s as a fraction of the peak of all devices in use."""
        return self.flops_per_image * images_per_second / (self.peak_flops * self.devices)

    def summary(self, images_per_second: Optional[float]) -> dict:
        """The fields summary.json carries."""
        return {"mfu": round(self.mfu(images_per_second), 5) if images_per_second else None,
                "train_flops_per_image": round(self.flops_per_image), "peak_flops": float(f"{self.peak_flops:.4g}"),
                "peak_flops_source": self.peak_source}

    def describe(self) -> str:
        return (f"speed: {self.flops_per_image / 1e9:.3g} GFLOP per training image; peak "
                f"{self.peak_flops / 1e12:.3g} TFLOP/s per device ({self.peak_source})")


def training_flops_per_image(model: nn.Module, image_shape: tuple[int, int, int],
                             autocast: Callable = contextlib.nullcontext,
                             device: Optional[torch.device] = None) -> float:
    """FLOPs of one training step per image: a copy of `model` (so BatchNorm statistics and the RNG that
    dropout draws from are left as they were) runs forward and backward on zero images of `image_shape`."""
    device = device or next(model.parameters()).device
    counted = copy.deepcopy(model).train()
    inputs = torch.zeros(FLOP_COUNT_BATCH, *image_shape, device=device)
    labels = torch.zeros(FLOP_COUNT_BATCH, dtype=torch.long, device=device)
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices), \
            FlopCounterMode(display=False) as counter:
        with autocast():
            loss = F.cross_entropy(counted(inputs), labels)
        loss.backward()
    return counter.get_total_flops() / FLOP_COUNT_BATCH


def datasheet_peak(device_name: str, precision: str) -> Optional[float]:
    """The table's dense peak for a GPU name at `precision` (bf16 | fp16 | fp32), None when unknown."""
    for pattern, tensor, fp32 in GPU_PEAKS:
        if re.search(pattern, device_name.upper()):
            return tensor if precision in ("bf16", "fp16") else fp32
    return None


@functools.lru_cache(maxsize=None)
def probe_peak(device_type: str, device_index: Optional[int], dtype: torch.dtype, threads: int) -> float:
    """FLOP/s of the best of repeated square matmuls at `dtype` (cached per device, dtype and thread count).

    On a CPU each matmul is timed in CPU seconds of this process, not wall seconds, and the rate per CPU
    second is scaled by `threads`: on a shared machine the wall time of a matmul counts the time other
    processes held the cores (we measured 8 GFLOP/s by the wall clock at a load of 17 on 2 cores, against
    ~80 on an idle core), which would put the peak far too low and MFU above 1. The CPU-time peak is what
    the run's threads could do with the cores to themselves; a busy machine then shows as a low MFU."""
    device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    # Near the peak, yet quick, so that a few repeats fit in PROBE_SECONDS.
    size = 4096 if device_type == "cuda" else 512
    a = torch.full((size, size), 1.0 / size, dtype=dtype, device=device)
    b = torch.full((size, size), 1.0 / size, dtype=dtype, device=device)
    if device_type == "cuda":
        def clock() -> float:
            torch.cuda.synchronize(device)  # note: the host waits for the device here
            return time.perf_counter()
        scale = 1
    else:
        clock, scale = time.process_time, threads
    torch.mm(a, b)  # warm-up: kernel selection, thread-pool start
    best, deadline = float("inf"), time.perf_counter() + PROBE_SECONDS
    while time.perf_counter() < deadline or best == float("inf"):
        started = clock()
        torch.mm(a, b)
        elapsed = clock() - started
        if elapsed > 0:
            best = min(best, elapsed)
    return 2 * size**3 / best * scale


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak FLOP/s of one device at `precision`, where it came from): the datasheet for a known GPU,
    else a matmul probe (see the module doc for why)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = datasheet_peak(name, precision)
        if peak is not None:
            return peak, f"datasheet: {name}, {precision} dense" + (" as TF32" if precision == "fp32" else "")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    threads = torch.get_num_threads()
    peak, probed = probe_peak(device.type, device.index, dtype, threads), precision
    if dtype != torch.float32:
        # The device's peak is its fastest matmul: where bf16 is emulated (a CPU without AVX512-BF16 or
        # AMX) fp32 is faster, and a bf16 run measured against its own slow matmul showed MFU over 100%.
        fp32_peak = probe_peak(device.type, device.index, torch.float32, threads)
        if fp32_peak > peak:
            peak, probed = fp32_peak, f"fp32 (faster here than {precision})"
    plural = "s" if threads != 1 else ""
    where = f"{threads} thread{plural}" if device.type == "cpu" else torch.cuda.get_device_name(device)
    return peak, f"matmul probe: {device.type}, {probed}, {where}"


def measure_speed(state) -> Optional[Speed]:
    """The Speed of a TrainState's model on its device and precision (about a quarter of a second), or None,
    with a warning, for a model the FLOP counter cannot run (a user's model with unusual ops): MFU is
    something to see, never a reason for a run to fail."""
    runtime = state.runtime
    image_shape = tuple(state.objects.train_loader.images.shape[1:])
    try:
        flops = training_flops_per_image(state.objects.model, image_shape, runtime.precision.autocast, runtime.device)
    except Exception as err:  # any failure of the counting pass costs only the MFU figure
        warnings.warn(f"the model's FLOPs could not be counted ({type(err).__name__}: {err}); MFU is left out",
                      stacklevel=2)
        return None
    peak, source = peak_flops(runtime.device, runtime.precision.name)
    return Speed(flops, peak, source, runtime.dist.world_size) if flops > 0 else None
