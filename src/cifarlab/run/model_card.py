"""`ModelCard`: what travels with the weights (timm's PretrainedCfg is the model): classes, input shape,
mean/std, precision, TTA, architecture and its options; and the checks every format's card passes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from cifarlab.run.field_checks import finite, need, whole

PRECISION_NAMES = ("bf16", "fp16", "fp32")


@dataclass(frozen=True)
class ModelCard:
    """What a model needs to be used, kept with its weights in every format a model comes in (timm's
    PretrainedCfg is the model): the classes in output order, the input (channels, size), the
    normalisation, the precision it was trained in, its test-time augmentation, the architecture with its
    options (`norm`, `dropout` and `model.options`: with `num_classes` and `in_channels`, the keywords of
    `create_model`) and the submodule that produces the logits (`classifier`, as the factory declared it).

    `to_dict` / `from_dict` write and read it as one unit: a checkpoint keeps its data fields flat beside
    the run's config (`from_config`), and every sidecar (export JSON, a model folder's config.json,
    MLflow's metadata) is `to_dict()` plus that format's extras. `from_dict` checks every field, so a card
    from any file is checked alike."""
    classes: tuple[str, ...]
    in_channels: int
    image_size: Optional[int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    precision: Optional[str]
    tta: Optional[str]
    architecture: str
    options: dict[str, Any] = field(default_factory=dict)
    classifier: Optional[str] = None
    # split -> sha256 of the data it trained on (Dataset.fingerprint; None in older checkpoints): evaluating
    # on other data warns, resuming refuses (data/checks.check_same_data)
    data_fingerprint: Optional[dict[str, Optional[str]]] = None

    # What a checkpoint stores flat (as cifarlab 0.1 wrote them); the rest comes from the run's config.
    DATA_FIELDS = ("classes", "mean", "std", "image_size", "in_channels", "precision")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def model_kwargs(self) -> dict[str, Any]:
        """The keywords that rebuild the network: `create_model(**card.model_kwargs())`."""
        return {"name": self.architecture, "num_classes": self.num_classes, "in_channels": self.in_channels,
                **self.options}

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-ready values (lists for tuples)."""
        return {"architecture": self.architecture, "options": dict(self.options), "classifier": self.classifier,
                "classes": list(self.classes), "in_channels": self.in_channels, "image_size": self.image_size,
                "mean": list(self.mean), "std": list(self.std), "precision": self.precision, "tta": self.tta,
                "data_fingerprint": self.data_fingerprint}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelCard":
        """The card of `data` (other keys are the format's extras), each field checked: a FieldProblem names
        the first one that is wrong. `in_channels` defaults to one per mean value."""
        check_card_fields(data)
        mean = tuple(data["mean"])
        need(isinstance(data.get("architecture"), str), "architecture", "a model name", data.get("architecture"))
        need(isinstance(data.get("options", {}), dict), "options", "a mapping", data.get("options"))
        return cls(classes=tuple(data["classes"]), in_channels=len(mean), image_size=data.get("image_size"),
                   mean=mean, std=tuple(data["std"]), precision=data.get("precision"), tta=data.get("tta"),
                   architecture=data["architecture"], options=dict(data.get("options") or {}),
                   classifier=data.get("classifier"), data_fingerprint=data.get("data_fingerprint"))

    @classmethod
    def from_config(cls, cfg, data: Mapping[str, Any]) -> "ModelCard":
        """The card of a run with config `cfg` whose data facts (DATA_FIELDS, data_fingerprint) are `data`:
        the one way a card is made, when a run trains and when a checkpoint or model folder is read.
        A file without `precision` (older cifarlab) has the config's."""
        from cifarlab.models.registry import MODELS

        check_card_fields(data)
        model, mean = cfg.model, tuple(data["mean"])
        known = model.name in MODELS.names()  # a user's model not imported yet: its factory declared nothing
        return cls(classes=tuple(data["classes"]), in_channels=len(mean), image_size=data.get("image_size"),
                   mean=mean, std=tuple(data["std"]), precision=data.get("precision") or cfg.train.precision,
                   tta=cfg.train.tta, architecture=model.name,
                   options={"norm": model.norm, "dropout": model.dropout, **model.options},
                   classifier=MODELS.facts(model.name)["classifier"] if known else None,
                   data_fingerprint=data.get("data_fingerprint"))

    def payload_fields(self) -> dict[str, Any]:
        """The card's DATA_FIELDS as checkpoints store them (flat keys, as cifarlab 0.1 wrote them)."""
        values = self.to_dict()
        return {key: values[key] for key in self.DATA_FIELDS}


def check_card_fields(data: Mapping[str, Any]) -> None:
    """The checks every format's card passes (a checkpoint, a model folder's config.json): distinct class
    names, 1 to 4 finite mean/std values with std > 0, a whole image size, a known precision."""
    classes = data.get("classes")
    need(isinstance(classes, (list, tuple)) and len(classes) >= 1 and all(isinstance(c, str) and c for c in classes)
         and len(set(classes)) == len(classes), "classes", "a list of distinct class names (non-empty strings)",
         classes)
    mean, std = data.get("mean"), data.get("std")
    for key, values in (("mean", mean), ("std", std)):
        need(isinstance(values, (list, tuple)) and 1 <= len(values) <= 4 and all(finite(v) for v in values),
             key, "a list of 1 to 4 finite numbers (one per channel)", values)
    channels = data.get("in_channels")
    need(channels is None or whole(channels, 1, 4), "in_channels", "a whole number in 1..4", channels)
    need(channels is None or len(mean) != len(std) or len(mean) == channels, "in_channels",
         f"{len(mean)}, as many as mean and std hold", channels)  # both lists agree: the count is what is off
    # Each list against the channels it normalises (mean's length only where the card has none): a mean
    # longer than the channels is the mean's fault, not the std's.
    for key, values in (("mean", mean), ("std", std)):
        count = len(mean) if channels is None else channels
        need(len(values) == count, key, f"{count} values, one per channel" if channels is not None else
             f"{count} values like mean", values)
    need(min(std) > 0, "std", "positive", std)
    image_size = data.get("image_size")
    need(image_size is None or whole(image_size, 1, 4096), "image_size", "a whole number in 1..4096", image_size)
    need(data.get("precision") in (None, *PRECISION_NAMES), "precision", "bf16, fp16 or fp32", data.get("precision"))
    prints = data.get("data_fingerprint")
    need(prints is None or (isinstance(prints, dict) and set(prints) == {"train", "val", "test"} and all(
        value is None or (isinstance(value, str) and len(value) == 64) for value in prints.values())),
        "data_fingerprint", "null or {train, val, test: a sha256 hex digest or null}", prints)
