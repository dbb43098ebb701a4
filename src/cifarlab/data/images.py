"""Image files -> uint8 tensors shaped for a model, for `cifarlab predict` and `gradcam`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cifarlab.errors import UserError


def read_image(path: str | Path, channels: int, size: int) -> torch.Tensor:
    """Any image file PIL reads -> uint8 (channels, size, size), resized with antialiasing."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
            pixels = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"image {path} is a directory; give image files") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"cannot read {path} as an image (PNG, JPEG, BMP, ... expected): {err}") from None
    tensor = torch.from_numpy(pixels.copy())
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()
