"""data/normalize.py: the same numbers as the textbook formula, with constants made once on the device."""
import pytest
import torch

from cifarlab.data.normalize import Normalize, normalize, to_float
from cifarlab.trainer.syncs import SyncCounter

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def images(n: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_to_float_is_exactly_pixels_over_255():
    x = images()
    assert torch.equal(to_float(x), x.float() / 255.0) and to_float(x).dtype == torch.float32
    assert to_float(torch.tensor([[[[0, 255]]]], dtype=torch.uint8)).tolist() == [[[[0.0, 1.0]]]]


@pytest.mark.parametrize("channels_last", [True, False])
def test_normalize_matches_the_formula_bit_for_bit_in_the_asked_layout(channels_last):
    pixels = to_float(images())
    expected = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) * (1.0 / torch.tensor(STD).view(1, 3, 1, 1))
    for out in (Normalize(MEAN, STD)(pixels, channels_last), normalize(pixels, MEAN, STD, channels_last)):
        assert torch.equal(out, expected)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert out.is_contiguous(memory_format=layout)


def test_normalize_keeps_double_precision_for_callers_that_use_it():
    pixels = to_float(images()).double()
    expected = (pixels - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) \
        * (1.0 / torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1))
    assert torch.equal(normalize(pixels, MEAN, STD, channels_last=False), expected)


def test_a_built_normalize_copies_nothing_from_the_host_per_call():
    norm, pixels = Normalize(MEAN, STD), to_float(images())
    with SyncCounter() as syncs:
        norm(pixels)
        norm(pixels, channels_last=False)
    assert syncs.total == 0, syncs.report()
    with SyncCounter() as syncs:  # the one-off function builds its constants from the Python lists
        normalize(pixels, MEAN, STD)
    assert syncs.counts["aten.lift_fresh"] == 2


def test_wrong_channel_count_or_dtype_is_an_error():
    with pytest.raises(ValueError, match="3 values for 1-channel"):
        Normalize(MEAN, STD)(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="float64"):
        Normalize(MEAN, STD)(torch.rand(2, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="one value per channel"):
        Normalize(MEAN, STD[:2])
