"""Image files and PIL images -> uint8 tensors shaped for a model (own folders, `predict`, `gradcam`).

One resize rule everywhere, so a model sees at prediction time what it saw in training: alpha is
composited over black, the shorter side is resized to `size` (antialiased bilinear) and the centre
`size` x `size` square is cropped. The aspect ratio is kept; nothing is squashed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cifarlab.errors import UserError

ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def fit_square(image, channels: int, size: int) -> np.ndarray:
    """A PIL image -> uint8 (size, size) for 1 channel or (size, size, 3) for 3, by the rule above."""
    from PIL import Image, ImageOps

    if image.format == "JPEG":
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still leaves both sides >= size: a phone
        # photo decodes ~10x faster. A no-op once the pixels are loaded, so files and PIL images agree
        # only up to this; both still go through the same crop and resize below.
        image.draft("L" if channels == 1 else "RGB", (size, size))
    if image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        # Drop alpha by compositing over black, so invisible pixels (often junk colours) count as black.
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        # ImageOps.fit crops the centre to a square, then resizes: the same as resize-shorter-side + centre crop.
        image = ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def to_chw(pixels: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, C) uint8 -> contiguous (C, H, W) tensor."""
    tensor = torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True))
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def read_image(path: str | Path, channels: int, size: int) -> torch.Tensor:
    """Any image file PIL reads -> uint8 (channels, size, size), by the resize rule in the module doc."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            pixels = fit_square(image, channels, size)
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"image {path} is a directory; give image files") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"cannot read {path} as an image (PNG, JPEG, BMP, ... expected): {err}") from None
    return to_chw(pixels)
