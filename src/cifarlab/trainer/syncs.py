"""Count the calls that make the host wait for the device, on any device, the CPU included.

On a GPU every `.item()`, `if tensor:`, `.tolist()`, data-dependent shape (`nonzero`) or tensor built
from Python data inside a training step stalls the host until the GPU catches up, so host time and GPU
time add up instead of overlapping (measured on an H100: bench/gpu_speed.py). `torch.cuda.set_sync_debug_mode` sees
those only on a GPU; this counter sees them wherever the code runs, so a CPU test can assert "zero".

Two nets, so neither Python calls nor calls made inside C++ slip through:
- the Tensor methods that read values back to the host are patched (`item`, `tolist`, `__bool__`,
  `__int__`, `__float__`, `__index__`, `nonzero`, `cpu`, `numpy`);
- a TorchDispatchMode sees every aten op, and counts `_local_scalar_dense` (what `.item()` becomes),
  the ops whose output shape depends on the data (boolean-mask indexing included), and `lift_fresh` (a tensor made
  from Python data: a host->device copy when it is then moved to a GPU).

    with SyncCounter() as syncs:
        train_step(state, inputs, labels)
    assert syncs.total == 0, syncs.report()
"""
from __future__ import annotations

import collections
import traceback
from typing import Callable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu", "numpy")
# aten ops that wait for the device: a scalar read back, an output whose size depends on the values.
SYNC_OPS = {"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "unique", "_unique",
            "_unique2", "unique_consecutive", "unique_dim", "bincount", "repeat_interleave", "histc"}
HOST_DATA_OPS = {"lift_fresh", "lift_fresh_copy"}  # torch.tensor(python data): a host->device copy on a GPU


class SyncCounter:
    """Context manager: `counts` by call name, `total`, and the stacks of the first `keep_stacks` calls.

    `ignore(tensor)` may exempt tensors that live on the host by design (torch.optim's Adam keeps its
    step counters on the CPU when the parameters are on a GPU, so reading them is no sync there).
    """

    def __init__(self, keep_stacks: int = 5, ignore: Optional[Callable[[torch.Tensor], bool]] = None):
        self.keep_stacks, self.ignore = keep_stacks, ignore
        self.counts: collections.Counter[str] = collections.Counter()
        self.stacks: list[tuple[str, list[str]]] = []
        self._saved: dict[str, object] = {}
        self._depth = 0  # >0 while inside a patched method: its own aten ops are not counted again
        self._mode: Optional[_Watch] = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, name: str) -> None:
        self.counts[name] += 1
        if len(self.stacks) < self.keep_stacks:
            frames = traceback.extract_stack()[:-2]  # without record() and its caller in here
            self.stacks.append((name, [f"{f.filename}:{f.lineno} {f.name}" for f in frames[-6:]]))

    def report(self) -> str:
        lines = [f"{self.total} host syncs: {dict(self.counts)}"]
        for name, frames in self.stacks:
            lines.append(f"  {name}, called from:")
            lines += [f"    {frame}" for frame in frames]
        return "\n".join(lines)

    def __enter__(self) -> "SyncCounter":
        for name in METHODS:
            self._saved[name] = vars(torch.Tensor).get(name)  # None: inherited from the C base class
            setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))
        self._mode = _Watch(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        for name, original in self._saved.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)
        self._saved.clear()

    def _wrap(self, name: str, method):
        counter = self

        def counted(tensor, *args, **kwargs):
            if counter._depth == 0 and not (counter.ignore and counter.ignore(tensor)):
                counter.record(name)
            counter._depth += 1
            try:
                return method(tensor, *args, **kwargs)
            finally:
                counter._depth -= 1

        counted.__name__ = name
        return counted


class _Watch(TorchDispatchMode):
    def __init__(self, counter: SyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if self.counter._depth == 0 and (name in SYNC_OPS or name in HOST_DATA_OPS or _mask_index(name, args)):
            tensor = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if not (tensor is not None and self.counter.ignore and self.counter.ignore(tensor)):
                self.counter.record(f"aten.{name}")
        return func(*args, **(kwargs or {}))


def _mask_index(name: str, args) -> bool:
    """`x[mask]` with a boolean mask: the output size is the number of True values."""
    if name != "index" or len(args) < 2:
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1])
