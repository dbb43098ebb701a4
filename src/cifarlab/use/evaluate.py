"""A checkpoint on its run's own test split: the data (`run_test_data`) and the numbers `cifarlab eval` prints
(`evaluate_checkpoint`), computed by the same `evaluate` the run's epochs used, so one checkpoint has one accuracy.
Only the test split gets a loader: evaluating builds nothing for training."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Union

from cifarlab.data.checks import check_same_data
from cifarlab.data.dataset import Dataset
from cifarlab.data.prepare import eval_loader, load_data
from cifarlab.models.inference import evaluate
from cifarlab.run.evaluation import Evaluation
from cifarlab.runtime import Runtime
from cifarlab.use.load import LoadedModel


def evaluation_data_config(data_cfg, data_dir: Optional[str] = None):
    """The checkpoint's `data` section with `dir` replaced by the user's (`data_dir`, else $CIFARLAB_DATA or
    the default cache): a built-in source decodes into and caches under `dir`, and a checkpoint is someone
    else's file, so evaluating it must not write a dataset cache wherever its config points. An image
    folder's `dir` is where its images are (only read; its cache goes under the user's cache folder)."""
    if data_cfg.dataset in ("folder", "hf"):  # data.dir is where the images are (hf: or a Hub name)
        return data_cfg if data_dir is None else data_cfg.model_copy(update={"dir": str(data_dir)})
    return data_cfg.model_copy(update={"dir": None if data_dir is None else str(data_dir)})


def run_test_data(model: LoadedModel, data_dir: Optional[str] = None) -> Dataset:
    """The run's own dataset (subsets and validation split as it trained), normalised with the checkpoint's
    statistics; its images are looked up under `data_dir` (see `evaluation_data_config`)."""
    cfg = model.config
    dataset = load_data(evaluation_data_config(cfg.data, data_dir), cfg.seed)
    check_same_data(model.classes, model.card.data_fingerprint, dataset, ("test",), "evaluated")
    return replace(dataset, mean=model.mean, std=model.std)


def evaluate_checkpoint(model: LoadedModel, data_dir: Optional[str] = None, tta: Union[str, bool, None] = None,
                        collect: Optional[list] = None) -> Evaluation:
    """Test loss and accuracy on the run's test split; `tta` None means as the run trained, False none.
    `collect`: a list that gets each batch's (log-probabilities, labels), as `evaluate` gives them."""
    tta = model.tta if tta is None else (tta or None)
    dataset = run_test_data(model, data_dir)
    runtime = Runtime(model.device, model.precision, channels_last=model.channels_last)
    loader = eval_loader(model.config, dataset.test, dataset, runtime)
    loss, acc = evaluate(model.module, loader, model.precision, tta, progress="auto", collect=collect)
    return Evaluation(epoch=model.epoch, test_loss=loss, test_acc=acc, images=loader.num_images, tta=tta,
                      precision=model.precision.name)
