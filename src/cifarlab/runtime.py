"""Device, precision and distributed rank, resolved once into small objects.

Code below this layer writes `with runtime.precision.autocast():` and `runtime.precision.scaler`, and
never asks "am I on CUDA?" again. `precision: auto` is measured, not read from flags: a run times its own
model's step in each candidate before it trains (trainer/autotune.py, called where the run is prepared)
and replaces `runtime.precision`; what `make_runtime` resolves for `auto` is only the unmeasured answer
(`unmeasured_precision`) that callers without a model (a checkpoint's fallback, the benchmarks) use.
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
from cifarlab.launch import (  # noqa: F401 (is_rank_zero: used from here)
    is_rank_zero,
    joined_process_group,
    launch_ranks,
    whole_env,
)
from cifarlab.messages import warn

CPU_AUTO_ENV = "CIFARLAB_CPU_AUTO_PRECISION"


def forced_cpu_precision() -> Optional[str]:
    """bf16 or fp32 where the environment variable CIFARLAB_CPU_AUTO_PRECISION forces `precision: auto`'s
    answer on a CPU (the test suite and the docs try the other machine's answer with it), else None."""
    forced = os.environ.get(CPU_AUTO_ENV, "").strip()
    if not forced:
        return None
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


def unmeasured_precision(device: torch.device) -> str:
    """`auto` where nothing was measured: a checkpoint or a caller with no model to time. A run's own `auto`
    is measured on its model before it trains (trainer/autotune.py), because CPU flags cannot tell: with
    AVX512-BF16 and no AMX, bf16 trained at 0.60-0.78x fp32 on an Intel Xeon and at 1.67-2.09x on an AMD
    EPYC Zen 4 (docs/precision.md). So: on a CPU fp32 (or what CIFARLAB_CPU_AUTO_PRECISION forces), on CUDA bf16
    where the GPU has bf16 tensor cores (sm80+), else fp16 with a GradScaler."""
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported() and torch.cuda.get_device_capability(device)[0] >= 8
        return "bf16" if bf16_ok else "fp16"
    return forced_cpu_precision() or "fp32"


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """`requested` (auto | bf16 | fp16 | fp32) on `device`, `auto` unmeasured (`unmeasured_precision`)."""
    name = unmeasured_precision(device) if requested == "auto" else requested
    if device.type == "cpu" and name == "fp16":
        # Recipes written for GPUs ask for fp16; a CPU has no fast fp16 path (a run measures its best instead).
        name = unmeasured_precision(device)
        warnings.warn("train.precision=fp16 needs a CUDA device; this CPU takes precision auto instead", stacklevel=2)
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
    # How the precision was chosen, for summary.json: "train.precision=bf16", or `auto`'s reason
    # ("measured 1.31x fp32 on this CPU, 2.1 s", cached, forced) once trainer/autotune.py has chosen.
    precision_source: Optional[str] = None

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
        joined_process_group()
    if dist.get_rank() == 0:
        _warn_restarts_with_shared_store()
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=_local_rank())


def _warn_restarts_with_shared_store() -> None:
    """torchrun that may restart its workers, with its rendezvous store shared with them (torch's default
    since 2.5): a restarted gloo or NCCL group can then read a dead worker's address and fail to connect
    (pytorch/pytorch#135712; 2 restarts in 6 here, none of 6 with the store not shared; docs/cluster.md)."""
    restarts = os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0").strip()
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and restarts.isdigit() and int(restarts) > 0:
        warn("warning: torchrun --max-restarts with a shared rendezvous store: a restart may fail to connect "
             "(pytorch/pytorch#135712); start torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1")


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
    precision = resolve_precision(train_cfg.precision, device)
    source = (f"train.precision={precision.name}" if precision.name == train_cfg.precision
              else f"train.precision={train_cfg.precision}, unmeasured")
    return Runtime(device, precision, dist, train_cfg.channels_last, precision_source=source)
