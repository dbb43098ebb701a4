"""Top-5 accuracy, per-class precision/recall/F1 and calibration (ECE, reliability bins): checked against
torchmetrics as an independent judge where it is installed, and on small cases worked by hand everywhere."""
from __future__ import annotations

import pytest
import torch

from cifarlab.analysis.metrics import calibration_bins, expected_calibration_error, precision_recall_f1, topk_accuracy


def _scores(N=500, K=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K, (N,), generator=generator)
    logits = torch.randn(N, K, generator=generator, dtype=torch.float64) * 2
    logits[torch.arange(N), labels] += 1.5  # better than chance, not perfect
    labels[:7] = 3  # class 3 common, and class K-1 never a label below
    labels[labels == K - 1] = 0
    return logits.softmax(1), labels


def test_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.45, 0.35, 0.2]])
    labels = torch.tensor([0, 2, 2, 1])
    assert topk_accuracy(probs, labels, 1) == 0.5 and topk_accuracy(probs, labels, 2) == 1.0
    scores = precision_recall_f1(labels, probs.argmax(1), 3)  # predicted 0, 1, 2, 0
    assert scores[0].tolist() == pytest.approx([0.5, 1.0, 2 / 3])  # 2 predicted as 0, 1 right; 1 image of 0
    assert scores[1].tolist() == [0.0, 0.0, 0.0]  # predicted once, wrongly; its one image missed
    assert scores[2].tolist() == pytest.approx([1.0, 0.5, 2 / 3])
    table = calibration_bins(probs, labels, bins=2)  # confidences 0.7, 0.5, 0.6, 0.45 -> bins 1, 1, 1, 0
    assert table["counts"].tolist() == [1, 3] and table["accuracy"].tolist() == pytest.approx([0.0, 2 / 3])
    expected = (1 * abs(0 - 0.45) + 3 * abs(2 / 3 - 0.6)) / 4
    assert expected_calibration_error(probs, labels, bins=2) == pytest.approx(expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_against_torchmetrics(seed):
    tm = pytest.importorskip("torchmetrics.classification")
    probs, labels = _scores(seed=seed)
    K = probs.shape[1]
    judge = tm.MulticlassAccuracy(num_classes=K, top_k=5, average="micro")
    assert topk_accuracy(probs, labels, 5) == pytest.approx(float(judge(probs, labels)), abs=1e-6)
    ours = precision_recall_f1(labels, probs.argmax(1), K)
    for column, metric in enumerate((tm.MulticlassPrecision, tm.MulticlassRecall, tm.MulticlassF1Score)):
        theirs = metric(num_classes=K, average=None)(probs, labels).double()
        assert torch.allclose(ours[:, column], theirs, atol=1e-6), metric.__name__  # float32 there
    ece = tm.MulticlassCalibrationError(num_classes=K, n_bins=15, norm="l1")(probs.float(), labels)
    assert expected_calibration_error(probs, labels, 15) == pytest.approx(float(ece), abs=1e-5)


@pytest.mark.slow  # a one-epoch run and an evaluation: about 5 s
def test_eval_prints_top5_f1_and_ece_of_the_predictions_every_other_path_makes(tmp_path, capsys):
    import json

    import cifarlab
    from cifarlab.cli import main
    from cifarlab.use.evaluate import run_test_data
    from cifarlab.use.predict import predictions

    assert main(["train", "smoke", f"output.dir={tmp_path}", "train.epochs=1", "schedule.peak_epoch=0.5",
                 "train.precision=fp32", "output.tensorboard=false", "output.progress=none"]) == 0
    best = next((tmp_path / "smoke").iterdir()) / "checkpoints" / "best.pt"
    capsys.readouterr()
    assert main(["eval", str(best)]) == 0
    out = capsys.readouterr().out.splitlines()
    result = json.loads(out[-1])
    assert out[1].startswith("top-5 accuracy ") and "macro F1" in out[1] and "ECE" in out[1]
    loaded = cifarlab.load_model(best)
    test = run_test_data(loaded).test
    made = predictions(loaded, test.images, test.labels)  # predict's path, not evaluate's
    assert len(loaded.classes) == 10 and result["test_top5_acc"] >= result["test_acc"]
    assert result["test_top5_acc"] == pytest.approx(topk_accuracy(made.probs, made.labels, 5), abs=1e-9)
    assert result["test_ece"] == pytest.approx(expected_calibration_error(made.probs, made.labels), abs=1e-4)


@pytest.mark.parametrize("K", [5, 12])
def test_the_report_summary_gives_top5_only_where_there_are_more_than_five_classes(K):
    from cifarlab.analysis.report import Text
    from cifarlab.analysis.run_sections import summary_section
    from cifarlab.config import load_config
    from cifarlab.use.predict import Predictions

    probs, labels = _scores(K=K)
    made = Predictions(probs=probs.float(), labels=labels, losses=-probs.log().gather(1, labels[:, None])[:, 0].float())
    text = " ".join(block.text for block in summary_section(None, "test_acc", made, load_config("smoke")).blocks
                    if isinstance(block, Text))
    if K > 5:
        assert f"{100 * topk_accuracy(probs, labels, 5):.2f}% top-5" in text
    else:
        assert "top-5" not in text
