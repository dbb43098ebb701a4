"""Confusion-matrix metrics (analysis/metrics.py) and split predictions (use/predict.py)."""
import pytest
import torch
from torch import nn

from cifarlab.analysis.metrics import confusion_matrix, format_per_class, per_class_accuracy, top_confused
from cifarlab.data.normalize import normalize, to_float
from cifarlab.use.predict import Predictions
from cifarlab.use.predict import predict_batch as predict

CIFAR_CLASSES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)




# ---------------------------------------------------------------- metrics

@pytest.mark.parametrize("seed", range(3))
def test_confusion_matrix_equals_a_brute_force_count(seed):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 7, (500,), generator=gen)
    preds = torch.where(torch.rand(500, generator=gen) < 0.6, labels, torch.randint(0, 7, (500,), generator=gen))
    expected = torch.zeros(7, 7, dtype=torch.long)
    for true, pred in zip(labels.tolist(), preds.tolist()):
        expected[true, pred] += 1
    confusion = confusion_matrix(labels, preds, 7)
    assert confusion.dtype == torch.long and torch.equal(confusion, expected)


def test_confusion_matrix_rejects_out_of_range_classes():
    with pytest.raises(ValueError, match=r"preds must be in 0\.\.2, got values in 0\.\.3"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 3]), 3)


def test_per_class_accuracy_on_a_known_matrix():
    confusion = torch.tensor([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    accuracy = per_class_accuracy(confusion)
    assert accuracy[:2].tolist() == pytest.approx([0.8, 0.75])
    assert torch.isnan(accuracy[2])  # no examples of class 2


def test_top_confused_orders_off_diagonal_cells_by_count():
    confusion = torch.tensor([[50, 3, 7], [9, 40, 0], [3, 1, 60]])
    assert top_confused(confusion, ["cat", "dog", "frog"], k=4) == [
        ("dog", "cat", 9), ("cat", "frog", 7), ("cat", "dog", 3), ("frog", "cat", 3),
    ]
    assert len(top_confused(confusion, ["cat", "dog", "frog"])) == 5  # zero counts are not pairs


def test_format_per_class_aligns_like_the_references():
    confusion = torch.diag(torch.tensor([87, 94, 86, 72, 87, 85, 94, 84, 96, 94]))
    confusion[:, 0] += torch.tensor([0, 6, 14, 28, 13, 15, 6, 16, 4, 6])
    confusion[0, 1] = 13
    text = format_per_class(confusion, CIFAR_CLASSES)
    lines = text.splitlines()
    assert lines[0] == "Accuracy of plane : 87 %"
    assert lines[1] == "Accuracy of   car : 94 %"
    assert lines[3] == "Accuracy of   cat : 72 %"
    assert len({line.index(":") for line in lines}) == 1


# ---------------------------------------------------------------- predictions

def images_and_labels(n=37, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=gen),
            torch.randint(0, 4, (n,), generator=gen))


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))


def test_predictions_equal_a_manual_forward():
    model = small_cnn()
    model(torch.randn(8, 3, 8, 8))  # BN running stats that differ from the initial ones
    model.train()
    images, labels = images_and_labels()
    result = predict(model, images, labels, MEAN, STD, batch_size=10)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        logits = model(normalize(to_float(images), MEAN, STD, channels_last=False))
    torch.testing.assert_close(result.probs, logits.softmax(1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(result.losses, nn.functional.cross_entropy(logits, labels, reduction="none"))
    assert result.probs.dtype == torch.float32 and result.labels.dtype == torch.int64
    assert not result.probs.is_inference() and not result.losses.is_inference()
    assert torch.equal(result.preds, logits.argmax(1))
    assert result.accuracy == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert result.mean_loss == pytest.approx(result.losses.mean().item(), rel=1e-6)


class FlipInvariant(nn.Module):
    """Sees the mean of an image and its mirror image, so an image and its flip score identically."""

    def __init__(self):
        super().__init__()
        self.net = small_cnn()

    def forward(self, x):
        return self.net((x + x.flip(3)) / 2)


def test_tta_on_a_flip_invariant_model_changes_nothing():
    model = FlipInvariant().eval()
    images, labels = images_and_labels()
    plain = predict(model, images, labels, MEAN, STD, tta=False)
    flipped = predict(model, images, labels, MEAN, STD, tta=True)
    torch.testing.assert_close(flipped.probs, plain.probs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(flipped.losses, plain.losses, atol=1e-5, rtol=1e-5)


def test_tta_averages_the_softmax_of_image_and_flip():
    model = small_cnn().eval()
    images, labels = images_and_labels()
    result = predict(model, images, labels, MEAN, STD, tta=True, channels_last=False)
    inputs = normalize(to_float(images), MEAN, STD, channels_last=False)
    with torch.no_grad():
        expected = (model(inputs).softmax(1) + model(inputs.flip(3)).softmax(1)) / 2
    torch.testing.assert_close(result.probs, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(result.losses, -expected.gather(1, labels.view(-1, 1)).squeeze(1).log())


def test_misclassified_are_sorted_by_loss():
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3], [0.45, 0.55]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    losses = -probs.gather(1, labels.view(-1, 1)).squeeze(1).log()
    result = Predictions(probs=probs, labels=labels, losses=losses)
    assert result.misclassified().tolist() == [2, 3, 1]
    assert result.misclassified(limit=2).tolist() == [2, 3]
    assert result.accuracy == pytest.approx(0.4)


def test_predict_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        predict(small_cnn(), torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), MEAN, STD)
