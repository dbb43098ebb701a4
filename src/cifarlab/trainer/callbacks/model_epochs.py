"""ModelEpochs: tells a model with a `start_epoch(epoch)` method which epoch begins."""
from __future__ import annotations

from cifarlab.trainer.callbacks import Callback


class ModelEpochs(Callback):
    """Tells a model that has a `start_epoch(epoch)` method (fastnet) which epoch begins: a model may
    train some parameters only in some epochs. From `state.progress.epoch`, so a resumed run does the same.
    A parameter that starts or stops training changes a compiled model's graph: torch.compile traces
    again, and those steps are timed as compiling (`TrainState.expect_recompile`)."""

    def on_epoch_start(self, state):
        start_epoch = getattr(state.objects.model, "start_epoch", None)
        if start_epoch is None:
            return
        before = [p.requires_grad for p in state.objects.model.parameters()]
        start_epoch(state.progress.epoch)
        if [p.requires_grad for p in state.objects.model.parameters()] != before:
            state.expect_recompile()
