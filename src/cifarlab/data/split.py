"""A validation split taken from the training split: stratified by class, fixed by the run's seed."""
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


def stratified_split(split: Split, size: Union[int, float], seed: int) -> tuple[Split, Split]:
    """(train, val): `size` images (fraction or count) drawn at random per class, in proportion to each
    class's share of `split` (largest remainders decide the rounding), the rest kept in their order."""
    labels = split.labels
    count = validation_size(size, len(labels))
    classes, per_class = labels.unique(return_counts=True)
    quota = per_class.double() * count / len(labels)
    taken = quota.floor().long()
    short = count - int(taken.sum())
    if short:  # the classes with the largest fractional parts take the images rounding left over
        taken[(quota - taken).argsort(descending=True, stable=True)[:short]] += 1
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
