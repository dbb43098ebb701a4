"""`Evaluation`: what `cifarlab eval` measures of a model file, the record it prints as a JSON line."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Evaluation:
    """`cifarlab eval`'s result: a model file's test metrics, evaluated as its run did (its precision, its
    TTA; `tta` None: none). top-5 only with more than 5 classes; top-5, macro F1 and ECE only where the
    evaluation kept the predictions (`cifarlab.evaluate` does, `use.evaluate.evaluate_checkpoint` does not)."""
    epoch: int
    test_loss: float
    test_acc: float
    images: int
    tta: Optional[str]
    precision: str
    test_top5_acc: Optional[float] = None
    test_macro_f1: Optional[float] = None
    test_ece: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON line `cifarlab eval` prints: the metrics it has (an absent one is left out, not null)."""
        return {key: value for key, value in asdict(self).items()
                if value is not None or key in ("tta",)}
