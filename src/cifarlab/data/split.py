"""A validation split taken from the training split: stratified by class, fixed by the run's seed.

Every class with at least 2 images gets at least one validation image, and every class keeps at least one
training image. Plain proportional rounding gave small classes none: on an unbalanced folder the split
could hold a single class, whose val_acc was 1.0 every epoch and picked the best checkpoint blindly. A split too small
to give each class one is taken all the same (the run warns, `cifarlab.data.checks`); one that would take a
class's last training image is refused."""
from __future__ import annotations

from typing import Union

import torch

from cifarlab.data.dataset import Split
from cifarlab.errors import UserError


def validation_size(size: Union[int, float], num_train: int) -> int:
    """`size` as an image count: a fraction in (0, 1) of `num_train`, or a count; at least 1, fewer than all."""
    count = round(size * num_train) if isinstance(size, float) else int(size)
    if not 1 <= count < num_train:
        raise UserError(f"data.val_split={size} leaves {num_train - count} of {num_train} training images for "
                        f"training; use a fraction in (0, 1) or a count in 1..{num_train - 1}")
    return count


def per_class_counts(per_class: torch.Tensor, count: int, size: Union[int, float, None] = None) -> torch.Tensor:
    """How many of each class's `per_class` images go to validation, `count` in all: in proportion to the
    class's share (largest remainders decide the rounding), then at least 1 for every class with 2 or more
    images (while `count` allows) and at most all but one; the images this moves are taken from, or given to,
    the classes furthest above (below) their proportional share. `size`: the data.val_split messages name."""
    quota = per_class.double() * count / int(per_class.sum())
    taken = quota.floor().long()
    short = count - int(taken.sum())
    if short:  # the classes with the largest fractional parts take the images rounding left over
        taken[(quota - taken).argsort(descending=True, stable=True)[:short]] += 1
    high = per_class - 1
    if count > int(high.sum()):
        raise UserError(f"data.val_split={size if size is not None else count} takes {count} of "
                        f"{int(per_class.sum())} training images, but every class keeps at least one for training: "
                        f"use a count of at most {int(high.sum())} (or a smaller fraction)")
    low = (per_class >= 2).long()
    if count < int(low.sum()):  # one each for the largest classes; checks.py warns about the others
        low = torch.zeros_like(low)
        low[per_class.argsort(descending=True, stable=True)[:count]] = 1
    bounded = torch.maximum(taken, low).minimum(high)
    change = count - int(bounded.sum())
    if change:
        bounded += _moved_seats(bounded, quota, low if change < 0 else high, change)
    return bounded


def _moved_seats(taken: torch.Tensor, quota: torch.Tensor, bound: torch.Tensor, change: int) -> torch.Tensor:
    """Per class, the images to add (`change` > 0, up to `bound`) or remove (`change` < 0, down to `bound`)
    so that `taken` sums to its target: each class's seats beyond its current count ranked by how far below
    its quota they are (or its current seats by how far above), the best `abs(change)` moved."""
    step = 1 if change > 0 else -1
    room = (bound - taken) * step
    owner = torch.repeat_interleave(torch.arange(len(taken)), room)
    offset = torch.arange(len(owner)) - torch.repeat_interleave(room.cumsum(0) - room, room)
    seat = taken[owner] + step * offset + (step > 0)  # the (1-based) seat number added, or removed
    distance = (quota[owner] - seat + 1) * step if step > 0 else seat - quota[owner]
    order = distance.argsort(descending=True, stable=True)[:abs(change)]
    return step * torch.bincount(owner[order], minlength=len(taken))


def stratified_split(split: Split, size: Union[int, float], seed: int) -> tuple[Split, Split]:
    """(train, val): `size` images (fraction or count) drawn at random per class, as many per class as
    `per_class_counts` gives, the rest kept in their order."""
    labels = split.labels
    count = validation_size(size, len(labels))
    classes, per_class = labels.unique(return_counts=True)
    taken = per_class_counts(per_class, count, size)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label, k in zip(classes.tolist(), taken.tolist()):
        members = (labels == label).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    in_val = torch.zeros(len(labels), dtype=torch.bool)
    in_val[torch.cat(chosen)] = True
    keep = (~in_val).nonzero().flatten()
    val = in_val.nonzero().flatten()
    return (Split(split.images[keep].contiguous(), labels[keep]), Split(split.images[val].contiguous(), labels[val]))
