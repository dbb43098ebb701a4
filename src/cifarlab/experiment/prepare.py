"""Before a run trains: its config checked against the data and the machine, its state built and
announced. Everything here may still refuse the run; nothing is written but config.yaml, at the end."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from cifarlab.atomic import atomic_write_text
from cifarlab.config import Config, load_config
from cifarlab.data.dataset import Dataset
from cifarlab.data.prepare import ARRAYS, check_batch_fits
from cifarlab.errors import UserError
from cifarlab.experiment.ranks import check_ranks_agree
from cifarlab.messages import say, warn
from cifarlab.run import layout
from cifarlab.runtime import Runtime, make_runtime
from cifarlab.trainer.autotune import settle_precision
from cifarlab.trainer.build import build_state, check_model_input, monitors
from cifarlab.trainer.preflight import check_integrations
from cifarlab.trainer.sizing import few_steps_warning, size_to_data
from cifarlab.trainer.state import TrainState


def checked_config(config: Union[Config, str, None], overrides: Sequence[str], data,
                   run_dir: Optional[Path], model=None) -> tuple[Config, Runtime, Dataset]:
    """`train`'s config resolved (recipe + overrides, `auto` sizes -> numbers), its runtime and its data,
    checked before the run directory exists: the user's model module, integrations, `model.init_from`.
    `model`: a Module instance, class or factory passed from Python; the config records how to rebuild it."""
    cfg = config if isinstance(config, Config) else load_config(config, list(overrides))
    if isinstance(config, Config) and overrides:
        raise ValueError("pass overrides with a recipe name or path, not with a Config object")
    if model is not None:
        from cifarlab.models.python_objects import model_section, refuse_model_overrides

        refuse_model_overrides(overrides)
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update=model_section(model))})
    from cifarlab.models.registry import import_user_modules

    import_user_modules(cfg.model.module)  # the user's recipe names it: their model registers itself
    if cfg.output.wandb:
        from cifarlab.trainer.writers.wandb_logger import require_wandb

        require_wandb()
    source = source_dataset(data)
    if source is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"dataset": ARRAYS})})
    if run_dir is None:
        layout.check_run_name(cfg.name)
    runtime = make_runtime(cfg.train, cfg.seed, cfg.deterministic)
    default_threads(cfg, runtime)
    cfg, dataset = size_to_data(cfg, source)  # `auto` batch size, epochs, val split -> numbers
    check_batch_fits(cfg.train, len(dataset.train.labels), runtime.dist.world_size)
    monitors(cfg, dataset.val is not None)  # a val_ metric without a validation split
    check_model_output(cfg.model.name, *check_model_input(cfg.model, dataset), dataset.num_classes)
    check_ranks_agree(cfg, dataset, runtime)  # before anything trains or is written: every node the same run
    check_integrations(cfg.output)
    if cfg.model.init_from:  # its file and fit are checked on a CPU copy now, before the run directory exists
        from cifarlab.models.registry import build_model
        from cifarlab.trainer.warmstart import init_from_checkpoint

        init_from_checkpoint(build_model(cfg.model, dataset.num_classes, dataset.in_channels), cfg.model,
                             dataset.classes, dataset.in_channels)
    return cfg, runtime, dataset


def check_model_output(name: str, output, images: int, num_classes: int) -> None:
    """A model (a user's above all) must return one tensor of logits, (N, num_classes), for N images: a
    tuple, a dict, a flat tensor or fewer rows than images would crash in the loss once the run directory
    exists, and extra columns would train and score silently against classes the data does not have."""
    if isinstance(output, torch.Tensor) and output.ndim == 2 and tuple(output.shape) == (images, num_classes) \
            and output.is_floating_point():
        return
    if isinstance(output, torch.Tensor):
        got = f"a {output.dtype} tensor of shape {tuple(output.shape)}"
    elif isinstance(output, dict):
        got = f"a dict with keys {', '.join(map(repr, output))}"
    elif isinstance(output, (tuple, list)):
        got = f"a {type(output).__name__} of {len(output)} values"
    else:
        got = f"a {type(output).__name__}"
    raise UserError(f"model {name!r} returns {got} for {images} images; it must return one floating-point tensor "
                    f"of logits of shape ({images}, {num_classes}): one row per image, one column per class "
                    f"({num_classes} classes)")


def refuse_used_run_dir(run_dir: Path) -> None:
    """`train(run_dir=...)` starts a run: into a new or empty folder, never over files already there (an
    earlier run's checkpoints and metrics would be overwritten or mixed with the new ones)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run_dir {run_dir} is a file; give a new or empty folder")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        hint = (f"; continue that run with cifarlab.resume({str(run_dir)!r})"
                if (run_dir / layout.CONFIG).exists() else "")
        raise UserError(f"run_dir {run_dir} is not empty: a new run goes into a new or empty folder{hint}")


def source_dataset(data) -> Optional[Dataset]:
    """`data=` of `train`/`resume` as a validated Dataset, or None when the config names the data."""
    if data is None:
        return None
    from cifarlab.data.arrays import as_dataset
    from cifarlab.data.torch_dataset import dataset_from_torch, is_torch_data

    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and is_torch_data(data[0]):
        return dataset_from_torch(*data)  # (train, test[, classes]) of torch Datasets or DataLoaders
    return as_dataset(data)


def prepare_state(cfg: Config, runtime: Runtime, dataset: Dataset, run_dir: Path) -> TrainState:
    """`auto` precision measured (trainer/autotune.py), range test if asked, then the state; the run is
    announced only once nothing can be rejected."""
    source = _lr_peak_source(cfg)
    cfg, runtime, precision = settle_precision(cfg, runtime, dataset)
    if cfg.output.mlflow:
        from cifarlab.trainer.writers.mlflow_logger import require_mlflow

        require_mlflow()
    if cfg.schedule.lr_peak == "auto":
        from cifarlab.lr_range.search import find_peak_lr

        cfg = find_peak_lr(cfg, runtime, dataset, run_dir)
    state = build_state(cfg, runtime, dataset, run_dir)
    if cfg.model.init_from:  # a new run from trained weights; an EMA copies them at its first update
        from cifarlab.trainer.warmstart import init_from_checkpoint

        announce(init_from_checkpoint(state.objects.model, cfg.model, state.classes, dataset.in_channels), runtime)
    onecycle_peak = cfg.schedule.name == "onecycle" and cfg.schedule.lr_peak
    state.progress.lr_peak = cfg.schedule.lr_peak if onecycle_peak else cfg.optim.lr
    state.progress.lr_peak_source = source
    if runtime.dist.is_main:
        atomic_write_text(run_dir / layout.CONFIG, cfg.to_yaml())
    announce(f"run directory: {run_dir}\n{data_line(dataset)}\ndevice: {runtime.describe()}", runtime)
    if precision is not None:
        announce(precision.line(), runtime)
    optimizer_steps = -(-state.steps_per_epoch // cfg.train.accumulate)  # micro-batches -> optimizer steps
    warning = few_steps_warning(optimizer_steps, cfg.train.epochs)
    if warning:
        announce(warning, runtime, warning=True)
    return state


def data_line(dataset: Dataset) -> str:
    """`data: fashion_mnist, 60,000 train / 10,000 test images, from <origin>`: counts first, then where."""
    val = f" / {len(dataset.val.labels):,} validation" if dataset.val is not None else ""
    return (f"data: {dataset.name}, {len(dataset.train.labels):,} train{val} / {len(dataset.test.labels):,} test "
            f"images, from {dataset.origin}")


def _lr_peak_source(cfg: Config) -> str:
    """How the run's peak learning rate is chosen, for summary.json."""
    if cfg.schedule.name != "onecycle" or cfg.schedule.lr_peak is None:
        return "optim.lr"
    if cfg.schedule.lr_peak == "auto":
        return f"range test (lr_find.suggestion={cfg.lr_find.suggestion})"
    return "schedule.lr_peak"


def announce(text: str, runtime: Runtime, warning: bool = False) -> None:
    """`text` as a message (messages.py: the `cifarlab` logger, stderr by default), from one process of a
    multi-process run; a `warning` is printed even by a quiet run (`output.progress: none`)."""
    if runtime.dist.is_main:
        (warn if warning else say)(text)


def default_threads(cfg: Config, runtime: Runtime) -> None:
    # Several CPU processes on one machine: split the cores instead of oversubscribing them.
    if runtime.dist.enabled and runtime.device.type == "cpu" and not cfg.train.threads:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", runtime.dist.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def shared_run_dir(run_dir: Optional[Path], runtime: Runtime) -> Path:
    """Rank 0 names the run directory; the other ranks learn it."""
    if not runtime.dist.enabled:
        return run_dir
    box = [str(run_dir) if run_dir else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return Path(box[0])
