"""The records of a run whose training is over (or stopped): summary.json and the closing line."""
from __future__ import annotations

from cifarlab.run import layout
from cifarlab.run.checkpoint import versions
from cifarlab.run.metrics import EpochRow
from cifarlab.run.summary import Summary
from cifarlab.run.summary import write_summary as write_summary_file
from cifarlab.trainer.state import TrainState


def write_summary(state: TrainState) -> Summary:
    """summary.json of the run as it stands (run/summary.Summary, also `Run.summary`)."""
    progress, saved = state.progress, state.process.last_checkpoint
    best = state.best() or EpochRow()  # the epoch saved as best.pt, chosen by state.monitor
    last = progress.history[-1] if progress.history else EpochRow()
    loader = state.objects.train_loader
    per_epoch = min(len(loader) * loader.batch_size, loader.num_images)
    images = progress.epoch * per_epoch + min(progress.batch_in_epoch * loader.batch_size, loader.num_images)
    train_seconds, outcome = progress.elapsed_seconds, state.outcome
    stopped = outcome.status in ("diverged", "interrupted")
    summary = Summary(
        recipe=state.cfg.name, model=state.cfg.model.name, dataset=state.cfg.data.dataset,
        num_params=sum(p.numel() for p in state.objects.model.parameters()),
        epochs_completed=progress.epoch, epochs=state.cfg.train.epochs,
        # best_test_acc is the test accuracy of best.pt: the best one when the test split selects it.
        selected_by=state.monitor, selected_on=selected_on(state.monitor),
        best_test_acc=best.test_acc, best_epoch=best.epoch,
        final_test_acc=last.test_acc, final_test_loss=last.test_loss, final_train_acc=last.train_acc,
        best_train_acc=max((row.train_acc for row in progress.history), default=None),
        wall_seconds=round(state.wall_seconds, 3), train_seconds=round(train_seconds, 3),
        compile_seconds=round(progress.compile_seconds, 3),
        train_images_per_second=round(images / train_seconds, 1) if train_seconds else None,
        **(state.speed.summary(images / train_seconds if train_seconds else None) if state.speed else {}),
        lr_peak=progress.lr_peak, lr_peak_source=progress.lr_peak_source, precision=state.runtime.precision.name,
        precision_source=state.runtime.precision_source,
        tta=state.cfg.train.tta, device=state.runtime.describe(), versions=versions(), status=outcome.status,
        early_stop=state.early_stop, diverged_at=state.diverged_at,
        # Where to go on from: the newest last.pt holding finite weights (never one saved after the blow-up).
        last_good_checkpoint=saved.path if stopped and saved else None,
        signal=outcome.why.signal if outcome.status == "interrupted" else None,
        signal_number=outcome.why.signal_number if outcome.status == "interrupted" else None,
    )
    if state.objects.val_loader is not None:
        summary.best_val_acc, summary.best_val_loss = best.val_acc, best.val_loss
        summary.final_val_acc, summary.val_images = last.val_acc, state.objects.val_loader.num_images
    if state.runtime.dist.is_main:
        write_summary_file(state.run_dir, summary)
    return summary


def closing_message(state: TrainState) -> str:
    """The line a finished, stopped, interrupted or diverged run ends with: what happened and what next."""
    run_dir = state.run_dir
    if state.status == "interrupted":
        return (f"{state.outcome.reason} at epoch {state.progress.epoch + 1}, step {state.progress.step}; "
                f"checkpoint saved. Resume with: cifarlab resume {run_dir}")
    if state.status == "diverged":
        where, saved = state.diverged_at, state.process.last_checkpoint
        good = (f"last good checkpoint: {saved.path} (step {saved.step}, epoch {saved.epoch})" if saved
                else "no checkpoint was written before it")
        return (f"training diverged: non-finite loss at step {where.step} with lr {where.lr:.4g}; "
                f"{good}. Try a lower learning rate: `cifarlab lr-find {state.cfg.name}` (the LR range test) "
                f"suggests one")
    best = state.best()
    if best is None:  # stopped before its first epoch ended
        return f"done: stopped before any epoch finished ({state.outcome.reason}) in {run_dir}"
    if state.early_stop is not None:
        run_dir = f"{run_dir} (stopped early after epoch {state.progress.epoch}: {state.outcome.reason})"
    last = state.progress.history[-1]
    last_epoch = f"last epoch ({last.epoch}) {100 * last.test_acc:.2f}%"
    if state.monitor.startswith("test_"):
        return (f"done: {layout.BEST} is epoch {best.epoch}, {SELECTED_ON_TEST} by {state.monitor}: test accuracy "
                f"{100 * best.test_acc:.2f}%; {last_epoch}; in {run_dir}")
    return (f"done: {layout.BEST} is epoch {best.epoch} (chosen by {state.monitor} {best.value(state.monitor):.4g}), "
            f"test accuracy {100 * best.test_acc:.2f}%; {last_epoch}; in {run_dir}")


SELECTED_ON_TEST = "selected on the test split (optimistic)"


def selected_on(monitor: str) -> str:
    """summary.json's `selected_on`: where best.pt was chosen, and when that makes its test accuracy optimistic."""
    return "validation split" if monitor.startswith("val_") else "test split (optimistic)"
