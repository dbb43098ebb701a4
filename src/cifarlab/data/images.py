"""Image files -> uint8 tensors shaped for a model, for `cifarlab predict` and `gradcam`.

Any file PIL reads: 8-bit images as they are, 16-bit ones (PNG/TIFF grayscale, mode I;16 or I) scaled to
0..255 rather than clipped, so a 16-bit PNG gives the tensor its 8-bit equivalent gives. A file is refused
in one line naming it when it is not a regular file, not an image, truncated or corrupt, or larger than
MAX_PIXELS (checked from the header, before anything is decoded: decompression bombs).
"""
from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from cifarlab.errors import UserError

MAX_PIXELS = 64_000_000  # a 8000x8000 photo; the models see 32x32
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _to_8bit(image):
    """A 16- or 32-bit integer grayscale image as mode L, scaled (0..65535 -> 0..255), never clipped."""
    from PIL import Image

    pixels = np.asarray(image)
    if image.mode == "I" and image.format not in ("PNG",) and pixels.size and int(pixels.max()) <= 255:
        scaled = np.clip(pixels, 0, 255).astype(np.uint8)  # an 8-bit image stored as 32-bit integers
    else:
        scaled = np.rint(np.clip(pixels.astype(np.float64), 0, 65535) * (255 / 65535)).astype(np.uint8)
    return Image.fromarray(scaled, "L")


def read_image(path: str | Path, channels: int, size: int) -> torch.Tensor:
    """Any image file PIL reads -> uint8 (channels, size, size), resized with antialiasing."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"image {path} is a directory; give image files")
    if not path.exists():
        raise UserError(f"image {path} does not exist")
    if not path.is_file():  # a FIFO would block, a device would be read until memory runs out
        raise UserError(f"image {path} is not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower cap decides
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise UserError(f"image {path} is {width}x{height} pixels, more than the "
                                    f"{MAX_PIXELS // 1_000_000} megapixels cifarlab decodes; scale it down first")
                if image.mode in (*SIXTEEN_BIT_MODES, "I"):
                    image = _to_8bit(image)
                image = image.convert("L" if channels == 1 else "RGB")
                if image.size != (size, size):
                    image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
                pixels = np.asarray(image, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise UserError(f"image {path} has more pixels than cifarlab decodes ({MAX_PIXELS // 1_000_000} "
                        "megapixels); scale it down first") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError,
            struct.error, zlib.error, MemoryError) as err:
        if isinstance(err, UserError):
            raise
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"cannot read {path} as an image (PNG, JPEG, BMP, ... expected): {reason}") from None
    tensor = torch.from_numpy(pixels.copy())
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()
