"""Device, precision and distributed rank, resolved once into small objects.

Code below this layer writes `with runtime.precision.autocast():` and `runtime.precision.scaler`, and
never asks "am I on CUDA?" again.
"""
from __future__ import annotations

import contextlib
import os
import random
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from cifarlab.errors import UserError
from cifarlab.launch import is_rank_zero, launch_ranks, whole_env  # noqa: F401 (is_rank_zero: used from here)


def cpu_bf16_is_fast() -> bool:
    """True where bf16 autocast trains faster than fp32 on this CPU: x86 with AMX tiles (`amx_bf16`).

    Only AMX's bf16 tile multiply (Sapphire Rapids and later) beats fp32 on a CPU. AVX512-BF16 alone is
    slower: on an Intel Xeon with avx512_bf16 but no AMX (2 cores, torch 2.13, issue 18) bf16 autocast
    trained at 0.60-0.78x the fp32 rate for every built-in model (`bench/precision.py` measures it), and
    on a CPU without either (AMD EPYC here) oneDNN emulates bf16 and is slower still. So this asks for AMX
    rather than `torch.ops.mkldnn._is_mkldnn_bf16_supported()`, which says True on AVX512-BF16 alone.

    The flags come from `torch.cpu.get_capabilities()`, torch's public read of cpuinfo (torch 2.13 has
    it; `torch.backends.cpu.get_cpu_capability()` only names the widest vector ISA, "AVX512" with or
    without AMX). `amx_tile` too because `amx_bf16` runs on the tile unit. A torch without the call: fp32."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:
        return False
    flags = capabilities()
    return bool(flags.get("amx_bf16") and flags.get("amx_tile"))


CPU_AUTO_ENV = "CIFARLAB_CPU_AUTO_PRECISION"


def cpu_auto_precision() -> str:
    """What `precision: auto` takes on this CPU: bf16 where it is fast (`cpu_bf16_is_fast`), else fp32.

    The environment variable CIFARLAB_CPU_AUTO_PRECISION=bf16|fp32 overrides the probe, so the other
    machine's answer can be tried here (the test suite is run with each, see docs/precision.md)."""
    forced = os.environ.get(CPU_AUTO_ENV, "").strip()
    if not forced:
        return "bf16" if cpu_bf16_is_fast() else "fp32"
    if forced not in ("bf16", "fp32"):
        raise UserError(f"environment variable {CPU_AUTO_ENV} must be bf16 or fp32 (or unset), got {forced!r}")
    return forced


@dataclass(frozen=True)
class Precision:
    name: str  # bf16 | fp16 | fp32
    device_type: str

    @property
    def dtype(self) -> Optional[torch.dtype]:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def make_scaler(self) -> Optional[torch.amp.GradScaler]:
        # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range and needs none.
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda", _local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"train.device must be auto, cpu, cuda or cuda:N, got {requested!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={requested} but no CUDA device is available; use auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"train.device must be auto, cpu, cuda or cuda:N, got {requested!r}")
    return device


def resolve_precision(requested: str, device: torch.device) -> Precision:
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported() and torch.cuda.get_device_capability(device)[0] >= 8
        auto = "bf16" if bf16_ok else "fp16"
    else:
        auto = cpu_auto_precision()
    name = auto if requested == "auto" else requested
    if device.type == "cpu" and name == "fp16":
        # Recipes written for GPUs ask for fp16; a CPU has no fast fp16 path, so take its best instead.
        warnings.warn(f"train.precision=fp16 needs a CUDA device; using {auto} on this CPU", stacklevel=2)
        name = auto
    return Precision(name, device.type)


def _local_rank() -> int:
    return whole_env("LOCAL_RANK", "0")


@dataclass
class Distributed:
    """torchrun's environment; world_size 1 when launched plainly."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class Runtime:
    device: torch.device
    precision: Precision
    dist: Distributed = field(default_factory=Distributed)
    channels_last: bool = True

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        ranks = f", {self.dist.world_size} processes" if self.dist.enabled else ""
        return f"{self.device} ({name}), precision {self.precision.name}{ranks}"


def init_distributed(device: torch.device) -> Distributed:
    _, world_size = launch_ranks()
    if world_size <= 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=_local_rank())


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def make_runtime(train_cfg, seed: int = 0, deterministic: bool = False) -> Runtime:
    """Resolve device, precision, ranks and threads from the `train` section; seed every RNG."""
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    device = resolve_device(train_cfg.device)
    dist = init_distributed(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    seed_everything(seed + dist.rank, deterministic)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device, resolve_precision(train_cfg.precision, device), dist, train_cfg.channels_last)
