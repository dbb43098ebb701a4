"""Whether and how a run directory goes on: the checks on its checkpoint and summary.json (a finished or
diverged run is refused), the config of a run extended to more epochs, and the state restored to go on."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cifarlab.atomic import atomic_write_text
from cifarlab.config import Config, validate
from cifarlab.data.checks import check_same_data
from cifarlab.data.dataset import Dataset
from cifarlab.data.prepare import load_data
from cifarlab.errors import UserError
from cifarlab.experiment.prepare import announce, default_threads, source_dataset
from cifarlab.experiment.ranks import check_ranks_agree
from cifarlab.messages import warn
from cifarlab.models.registry import MODELS, import_user_modules
from cifarlab.run import layout
from cifarlab.run.checkpoint import Checkpoint, read_checkpoint, versions
from cifarlab.run.outcomes import SavedCheckpoint
from cifarlab.run.summary import Summary, read_summary
from cifarlab.runtime import make_runtime
from cifarlab.trainer.build import build_state
from cifarlab.trainer.checkpoint import restore
from cifarlab.trainer.preflight import check_integrations
from cifarlab.trainer.state import TrainState
from cifarlab.trainer.writers.checkpointer import mark_best_completed


@dataclass
class ResumePoint:
    """A checked checkpoint to go on from: the record, the file read (last.pt or its previous copy), the
    run's config (extended when asked), whether training had finished, and the summary.json found."""
    checkpoint: Checkpoint
    checkpoint_used: Path
    cfg: Config
    finished: bool
    previous: Summary


def resume_point(run_dir: Path, checkpoint: Path, epochs: Optional[int], more: Optional[int] = None) -> ResumePoint:
    """The run's checkpoint, checked before anything is written; refuses a run that already finished (unless
    extended to `epochs` in all, or by `more` beyond its planned train.epochs) and one that diverged."""
    stored, used = read_checkpoint(checkpoint, resume=True)  # all read below is checked before anything is written
    cfg = stored.cfg
    import_run_model_module(cfg.model)
    if more is not None:
        epochs = cfg.train.epochs + more
    if epochs is not None:
        cfg = extend_config(cfg, stored.epoch, epochs)
    check_integrations(cfg.output, run_dir)  # before config.yaml is rewritten (--epochs) or training goes on
    layout.check_run_files(run_dir)
    try:
        previous = read_summary(run_dir, required=False) or Summary()
    except UserError:
        previous = Summary()
    finished = epochs is None and (stored.status == "completed" or stored.epoch >= cfg.train.epochs)
    if finished and previous.status == "completed" and previous.epochs_completed == stored.epoch:
        raise UserError(f"run {run_dir} already finished ({stored.epoch}/{cfg.train.epochs} epochs); "
                        f"nothing to resume — extend it with `cifarlab resume {run_dir} --epochs N` "
                        f"or start a new run with `cifarlab train`")
    if not finished and "diverged" in (previous.status, stored.status):
        step = previous.diverged_at.step if previous.diverged_at is not None else None
        raise UserError(f"run {run_dir} diverged at step {step}; resuming "
                        f"would diverge again — start a new run with a lower optim.lr (see `cifarlab lr-find`)")
    written_with = stored.versions.get("torch")
    if written_with != versions()["torch"]:
        warn(f"warning: {used} was written with torch {written_with}, this is "
             f"{versions()['torch']}; the resumed run may not match an uninterrupted one bit for bit")
    return ResumePoint(stored, used, cfg, finished, previous)


def import_run_model_module(model_cfg) -> None:
    """Training a run on imports the module its recipe named (`model.module`), as `train` did when it
    started the run: with the same checks (a dotted module name, validated with the checkpoint; one line
    when it cannot be imported), and only when the run's model is not registered yet (by `--import`, or a
    built-in), so a module named beside a model that needs none is never imported. A killed sweep's trial
    resumes this way. Loading a checkpoint to evaluate, predict or export never imports it (it may come
    from someone else): resume a run you would train from its recipe."""
    if model_cfg.module and model_cfg.name not in MODELS.names():
        import_user_modules(model_cfg.module)


def restore_state(point: ResumePoint, run_dir: Path, data, extended: bool) -> tuple[TrainState, Dataset]:
    """The state as `point` saved it, on the run's data (`data`: its arrays, for a run trained on arrays).
    A finished run's state is stopped where it ended and its best.pt marked completed, for the bookkeeping."""
    cfg, used = recorded_precision(point.cfg, point.checkpoint.precision), point.checkpoint_used
    runtime = make_runtime(cfg.train, cfg.seed, cfg.deterministic)
    runtime.precision_source = point.previous.precision_source or runtime.precision_source  # never measured again
    default_threads(cfg, runtime)
    dataset = load_data(cfg.data, cfg.seed, source_dataset(data))
    check_same_data(point.checkpoint.classes, point.checkpoint.data_fingerprint, dataset,
                    ("train", "val", "test"), "resumed")
    check_ranks_agree(cfg, dataset, runtime)
    state = build_state(cfg, runtime, dataset, run_dir)
    restore(state, point.checkpoint, used)
    state.process.last_checkpoint = SavedCheckpoint(str(used), state.progress.epoch, state.progress.step)
    if point.finished:
        # The final last.pt was written but the process died before summary.json (which needs the whole
        # run): last.pt is the truth, so finish the bookkeeping from it instead of refusing.
        if state.progress.epoch < cfg.train.epochs and state.stop is None:
            state.request_stop("stopped early (the checkpoint says the run finished)")
        missing = "missing" if point.previous.status is None else "out of date"
        announce(f"run {run_dir} had finished ({state.progress.epoch}/{cfg.train.epochs} epochs) "
                 f"but its {layout.SUMMARY} "
                 f"is {missing}: rebuilding it from {used}", runtime, warning=True)
        mark_best_completed(layout.checkpoint_path(run_dir, layout.BEST))
        return state, dataset
    if extended and runtime.dist.is_main:  # the run's config now records the new total
        atomic_write_text(run_dir / layout.CONFIG, cfg.to_yaml())
    progress = state.progress
    announce(f"resuming {run_dir} at epoch {progress.epoch + 1}, batch {progress.batch_in_epoch} "
             f"(step {progress.step})", runtime)
    return state, dataset


def recorded_precision(cfg: Config, trained: Optional[str]) -> Config:
    """The run's config with the precision its checkpoint trained in, where the config still says `auto`
    (runs from before `auto` was resolved into config.yaml): a resume never measures again."""
    if cfg.train.precision != "auto" or trained not in ("bf16", "fp16", "fp32"):
        return cfg
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": trained})})


def extend_config(cfg: Config, epochs_done: int, epochs: int) -> Config:
    """The config of a run extended to `epochs` in all. onecycle and cosine keep the plan they were
    built over (`schedule.planned_epochs`), so the added epochs hold the lr the plan ended at; per-epoch
    schedules continue as they would have. Refuses a total that does not exceed the epochs done."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= epochs_done:
        raise UserError(f"--epochs must be more than the {epochs_done} epochs this run has done, got {epochs}")
    schedule = cfg.schedule
    if schedule.name in ("onecycle", "cosine") and schedule.planned_epochs is None:
        schedule = schedule.model_copy(update={"planned_epochs": cfg.train.epochs})
    raw = cfg.to_dict()
    raw["train"]["epochs"] = epochs
    raw["schedule"] = schedule.model_dump(mode="json")
    return validate(raw)
