"""A run's data, ready to train on: the dataset a `data` section describes (source, subsets, validation
split, normalisation) and the loaders that serve it on the run's device. Below the trainer, so that
`cifarlab eval`, the report and the range test prepare data the same way without importing it."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

from cifarlab.config import Config
from cifarlab.data.augment import build_augment
from cifarlab.data.checks import check_dataset
from cifarlab.data.dataset import Dataset, Split
from cifarlab.data.loader import DeviceLoader
from cifarlab.data.mix import build_mix
from cifarlab.data.sources import load_dataset
from cifarlab.data.split import stratified_split
from cifarlab.errors import UserError
from cifarlab.runtime import Runtime

ARRAYS = "arrays"  # data.dataset of a run whose images came from Python (`cifarlab.train(cfg, data=...)`)
VAL_FRACTION = 0.1  # data.val_split=auto: taken from train when the data has no validation split of its own...
VAL_MIN_TRAIN_PER_CLASS = 20  # ...and every class has this many training images on average


def auto_val_split(dataset: Dataset) -> Optional[float]:
    """VAL_FRACTION of train, or None when the data brings its own validation split or has too few images."""
    if dataset.val is not None or len(dataset.train.labels) < VAL_MIN_TRAIN_PER_CLASS * dataset.num_classes:
        return None
    return VAL_FRACTION


def load_data(data_cfg, seed: int = 0, source: Optional[Dataset] = None) -> Dataset:
    """The dataset a `data` section describes: its source (or `source`, images passed from Python), the
    subsets, the validation split (drawn with `seed`), and the normalisation to train with."""
    if source is None and data_cfg.dataset == ARRAYS:
        raise UserError("this run trained on arrays passed from Python (data.dataset=arrays); pass them again, "
                        "e.g. cifarlab.resume(run_dir, data=(x_train, y_train, x_test, y_test))")
    dataset = source or load_dataset(data_cfg.dataset, data_cfg.dir, download=data_cfg.download, **data_cfg.options)
    C = dataset.in_channels
    for key in ("mean", "std"):
        given = getattr(data_cfg, key)
        if given is not None and len(given) != C:
            raise UserError(f"data.{key} needs {C} values for {data_cfg.dataset} ({C}-channel images), got {given}")
    if data_cfg.std is not None and min(data_cfg.std) <= 0:
        raise UserError(f"data.std values must be positive, got {data_cfg.std}")
    train, test, val = (_first(dataset.train, data_cfg.train_subset), _first(dataset.test, data_cfg.test_subset),
                        dataset.val)
    val_split = data_cfg.val_split
    if val_split == "auto":  # a run decides it in size_to_data and records the number; benchmarks come here
        val_split = auto_val_split(replace(dataset, train=train))
    if val_split is not None:
        if val is not None:
            raise UserError(f"data.val_split is set but {data_cfg.dataset} has its own validation split; "
                            f"set data.val_split=null to use it")
        train, val = stratified_split(train, val_split, seed)
    dataset = replace(dataset, train=train, test=test, val=val,
                      mean=tuple(data_cfg.mean or dataset.mean), std=tuple(data_cfg.std or dataset.std))
    check_dataset(dataset, std_given=data_cfg.std is not None, val_split=val_split)
    return dataset


def _first(split: Split, count: Optional[int]) -> Split:
    return split if count is None else Split(split.images[:count], split.labels[:count])


def make_loaders(cfg: Config, dataset: Dataset, runtime: Runtime) -> tuple[DeviceLoader, DeviceLoader]:
    """(train, test) loaders; `make_val_loader` adds the validation one.

    A training batch is one optimizer step's images: train.batch_size x train.accumulate, which
    `trainer.accumulate.micro_batches` splits again; so the schedule, `state.progress.step` and the resume point
    count optimizer steps with no change, and the batches are those of one batch of that size."""
    check_batch_fits(cfg.train, len(dataset.train.labels), runtime.dist.world_size)
    step_images = cfg.train.batch_size * cfg.train.accumulate
    augment = build_augment(cfg.augment, dataset.image_size, dataset.in_channels, seed=cfg.seed)
    mix = build_mix(cfg.augment.mixup, cfg.augment.cutmix, dataset.num_classes)
    train = DeviceLoader(dataset.train.images, dataset.train.labels, batch_size=step_images, mix=mix,
                         train=True, augment=augment, device=runtime.device, mean=dataset.mean, std=dataset.std,
                         seed=cfg.seed, channels_last=runtime.channels_last, rank=runtime.dist.rank,
                         world_size=runtime.dist.world_size,
                         # A compiled step keeps one shape: the ragged last batch would recompile (or
                         # miss its CUDA graph), so it is dropped; the images come again next epoch.
                         drop_last=cfg.train.compile is not None)
    test = eval_loader(cfg, dataset.test, dataset, runtime)
    return train, test


def check_batch_fits(train_cfg, num_train: int, world_size: int) -> None:
    """One optimizer step's images (train.batch_size x train.accumulate) must fit in the training split and the
    batch divide over the processes; `train` checks this before the run directory exists."""
    if train_cfg.batch_size * train_cfg.accumulate > num_train:
        accumulate = f" x train.accumulate={train_cfg.accumulate}" if train_cfg.accumulate > 1 else ""
        raise UserError(f"train.batch_size={train_cfg.batch_size}{accumulate} is larger than the "
                        f"{num_train} training images; use at most that many")
    if train_cfg.batch_size % world_size:
        raise UserError(f"train.batch_size={train_cfg.batch_size} must divide evenly over {world_size} processes")


def eval_loader(cfg: Config, split: Split, dataset: Dataset, runtime: Runtime) -> DeviceLoader:
    return DeviceLoader(split.images, split.labels, batch_size=cfg.train.eval_batch_size, train=False,
                        device=runtime.device, mean=dataset.mean, std=dataset.std, seed=cfg.seed,
                        channels_last=runtime.channels_last, rank=runtime.dist.rank, world_size=runtime.dist.world_size)
