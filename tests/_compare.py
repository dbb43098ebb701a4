"""The one way tests compare what checkpoints, state dicts and optimizer states hold.

Exact resume, a run continued by a scheduler, an old run trained on and a training step that must leave a
model alone all ask the same question: is this state the same, bit for bit? `assert_same_state` answers it
for any nesting of dicts, lists and tensors (a model's state_dict, an optimizer's nested `state` and
`param_groups`, the RNG states, a whole checkpoint payload); `assert_same_checkpoint` for two checkpoint
files. The first difference fails with its path (`last.pt:optimizer.state.3.momentum_buffer`).

Written here rather than taken from a library: torch.testing.assert_close compares values (NaN != NaN unless
asked, -0.0 == 0.0, dict order ignored); a resumed run must reproduce the bytes and the order
load_state_dict reads them in.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Optional, Union

import torch

# What a process measures about itself: naturally differs between two runs of the same training.
TIMING = frozenset({"elapsed_seconds", "images_per_second", "wall_seconds", "train_seconds",
                    "train_images_per_second", "mfu", "train_flops_per_image", "peak_flops", "peak_flops_source"})
# The state a resumed run must end with exactly as its uninterrupted twin (every part of the TrainState a
# checkpoint holds; `config` differs in output.dir and is compared by the tests that need it).
STATE_KEYS = ("model", "optimizer", "schedule", "lr_used", "ema", "lookahead", "epoch", "step", "batch_in_epoch",
              "history", "rng", "epoch_meter", "window_meter", "status")


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def assert_same_state(got, want, where: str = "", skip: Iterable[str] = TIMING) -> None:
    """`got` is `want` exactly: tensors of the same dtype, shape and device with the same bytes (so NaN in the
    same places counts as equal, -0.0 and 0.0 do not); dicts with the same keys in the same order, compared
    key by key; lists and tuples element by element; anything else of the same type and equal (NaN equal to
    NaN). Dict keys in `skip` (timing, by default) are left out at every level."""
    skip = frozenset(skip)
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), f"{where}: {type(got).__name__}, not a tensor"
        kinds = [(tensor.dtype, tuple(tensor.shape), str(tensor.device)) for tensor in (got, want)]
        assert kinds[0] == kinds[1], f"{where}: {kinds[0]} != {kinds[1]} (dtype, shape, device)"
        assert torch.equal(_bits(got), _bits(want)), f"{where}: the values differ"
    elif isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {type(got).__name__}, not a dict"
        keys = [key for key in want if key not in skip]
        assert [key for key in got if key not in skip] == keys, f"{where}: keys {list(got)} != {list(want)}"
        for key in keys:
            assert_same_state(got[key], want[key], f"{where}.{key}" if where else str(key), skip)
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for index, (item, expected) in enumerate(zip(got, want)):
            assert_same_state(item, expected, f"{where}[{index}]", skip)
    else:
        both_nan = isinstance(want, float) and isinstance(got, float) and math.isnan(got) and math.isnan(want)
        assert type(got) is type(want) and (got == want or both_nan), f"{where}: {got!r} != {want!r}"


def _payload(checkpoint: Union[Path, str, dict]) -> dict:
    if isinstance(checkpoint, dict):
        return checkpoint
    from cifarlab.run.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)


def assert_same_checkpoint(got: Union[Path, str, dict], want: Union[Path, str, dict],
                           keys: Optional[Iterable[str]] = STATE_KEYS, where: str = "") -> None:
    """Two checkpoints (files, or payloads already loaded) hold the same `keys` exactly (`assert_same_state`);
    `keys=None`: every key but the timing ones. A key absent from both is the same."""
    where = where or (Path(want).name if isinstance(want, (str, Path)) else "checkpoint")
    got, want = _payload(got), _payload(want)
    if keys is None:
        assert_same_state(got, want, where)
        return
    for key in keys:
        assert (key in got) == (key in want), f"{where}: {key!r} in one checkpoint only"
        if key in want:
            assert_same_state(got[key], want[key], f"{where}:{key}")
