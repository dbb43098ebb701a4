"""A run sized to its data: `auto` batch size, epochs and validation split, and the few-steps warning.

The `folder` recipe leaves these three to the data because a recipe sized for 60,000 images does not
learn from 1,000: at batch 256, 1,000 images make 4 optimizer steps an epoch, and fmnist-quick's 6 epochs
(24 steps in all) ended at chance (10.33%) on 100 Fashion-MNIST images per class, where batch 32 for
10 epochs reached 82.33%. The rules aim at a few hundred optimizer steps however few images
there are, while a large folder keeps a large batch and a handful of epochs.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

from cifarlab.config import Config
from cifarlab.data.checks import warn_unmeasured_classes
from cifarlab.data.dataset import Dataset
from cifarlab.data.prepare import auto_val_split, load_data
from cifarlab.data.split import stratified_split

AUTO = "auto"
STEPS_PER_EPOCH = 25  # the batch is the largest power of two that gives at least this many steps an epoch
BATCH_RANGE = (8, 256)
TARGET_STEPS = 600  # epochs: enough for this many optimizer steps in all...
EPOCH_RANGE = (8, 100)  # ...but at least 8 epochs and at most 100
FEW_STEPS = 50  # fewer optimizer steps than this in a whole run rarely learn anything: warn


def size_to_data(cfg: Config, source: Optional[Dataset] = None) -> tuple[Config, Dataset]:
    """(config with every `auto` replaced by the value used, dataset): what a run trains with.

    Loads the data as `load_data` does; the returned config is what config.yaml records, so a resumed
    or re-run run gets the same split, batch and epochs without sizing again."""
    data_cfg = cfg.data
    if data_cfg.val_split != AUTO:
        dataset = load_data(data_cfg, cfg.seed, source)
    else:
        dataset = load_data(data_cfg.model_copy(update={"val_split": None}), cfg.seed, source)
        fraction = auto_val_split(dataset)
        if fraction is not None:
            train, val = stratified_split(dataset.train, fraction, cfg.seed)
            dataset = replace(dataset, train=train, val=val)
            warn_unmeasured_classes(dataset, fraction)
        data_cfg = data_cfg.model_copy(update={"val_split": fraction})
    num_train = len(dataset.train.labels)
    batch_size = cfg.train.batch_size
    if batch_size == AUTO:
        batch_size = auto_batch_size(num_train)
    epochs = cfg.train.epochs
    if epochs == AUTO:
        epochs = auto_epochs(math.ceil(num_train / batch_size))
    train_cfg = cfg.train.model_copy(update={"batch_size": batch_size, "epochs": epochs})
    return cfg.model_copy(update={"data": data_cfg, "train": train_cfg}), dataset


def auto_batch_size(num_train: int) -> int:
    """The largest power of two giving at least STEPS_PER_EPOCH steps an epoch, within BATCH_RANGE and
    never more than the training images."""
    low, high = BATCH_RANGE
    batch = 2 ** max(0, math.floor(math.log2(max(1, num_train // STEPS_PER_EPOCH))))
    return min(max(batch, low), high, num_train)


def auto_epochs(steps_per_epoch: int) -> int:
    """Epochs for about TARGET_STEPS optimizer steps, within EPOCH_RANGE."""
    low, high = EPOCH_RANGE
    return min(max(math.ceil(TARGET_STEPS / max(1, steps_per_epoch)), low), high)


def few_steps_warning(steps_per_epoch: int, epochs: int) -> Optional[str]:
    """One line when a run takes fewer than FEW_STEPS optimizer steps in all, else None."""
    total = steps_per_epoch * epochs
    if total >= FEW_STEPS:
        return None
    return (f"warning: this run takes only {total} optimizer steps ({steps_per_epoch} per epoch x {epochs} "
            f"epochs); under {FEW_STEPS} rarely learn anything: lower train.batch_size or raise train.epochs "
            f"(the folder recipe sizes both to the data)")
