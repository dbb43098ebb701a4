"""Image files and PIL images -> uint8 tensors shaped for a model (own folders, `predict`, `gradcam`).

One resize rule everywhere, so a model sees at prediction time what it saw in training: alpha is
composited over black, the shorter side is resized to `size` (antialiased bilinear) and the centre
`size` x `size` square is cropped. The aspect ratio is kept; nothing is squashed.

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
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _to_8bit(image):
    """A 16- or 32-bit integer grayscale image as mode L, scaled (0..65535 -> 0..255), never clipped."""
    from PIL import Image

    pixels = np.asarray(image)
    if image.mode == "I" and image.format not in ("PNG",) and pixels.size and int(pixels.max()) <= 255:
        scaled = np.clip(pixels, 0, 255).astype(np.uint8)  # an 8-bit image stored as 32-bit integers
    else:
        scaled = np.rint(np.clip(pixels.astype(np.float64), 0, 65535) * (255 / 65535)).astype(np.uint8)
    return Image.fromarray(scaled, "L")


def _float_to_8bit(image):
    """A 32-bit float grayscale image (mode F, e.g. a scientific TIFF) as mode L: values in [0, 1] are scaled
    by 255 (PIL's own convert would clip them to black), larger ones are taken as 0..255."""
    from PIL import Image

    pixels = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    scale = 255.0 if pixels.size and float(pixels.max()) <= 1.0 else 1.0
    return Image.fromarray(np.rint(np.clip(pixels * scale, 0, 255)).astype(np.uint8), "L")


def fit_square(image, channels: int, size: int) -> np.ndarray:
    """A PIL image -> uint8 (size, size) for 1 channel or (size, size, 3) for 3, by the rule above."""
    from PIL import Image, ImageOps

    if image.format == "JPEG":
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still leaves both sides >= size: a phone
        # photo decodes ~10x faster. A no-op once the pixels are loaded, so files and PIL images agree
        # only up to this; both still go through the same crop and resize below.
        image.draft("L" if channels == 1 else "RGB", (size, size))
    if image.mode in (*SIXTEEN_BIT_MODES, "I"):
        image = _to_8bit(image)
    elif image.mode == "F":
        image = _float_to_8bit(image)
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


def open_checked(path: Path):
    """`Image.open(path)` for a regular file within MAX_PIXELS, else one UserError naming it."""
    from PIL import Image

    if path.is_dir():
        raise UserError(f"image {path} is a directory; give image files")
    if not path.exists():
        raise UserError(f"image {path} does not exist")
    if not path.is_file():  # a FIFO would block, a device would be read until memory runs out
        raise UserError(f"image {path} is not a regular file")
    with warnings.catch_warnings():  # PIL warns above its own limit; MAX_PIXELS, lower, decides below
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(path)
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise UserError(f"image {path} is {width}x{height} pixels, more than the "
                        f"{MAX_PIXELS // 1_000_000} megapixels cifarlab decodes; scale it down first")
    return image


def read_image(path: str | Path, channels: int, size: int) -> torch.Tensor:
    """An image file -> uint8 (channels, size, size) by the rule in the module doc; one line if unreadable."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower cap decides
            with open_checked(path) as image:
                pixels = fit_square(image, channels, size)
    except UserError:
        raise
    except Image.DecompressionBombError:
        raise UserError(f"image {path} has more pixels than cifarlab decodes ({MAX_PIXELS // 1_000_000} "
                        "megapixels); scale it down first") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError,
            struct.error, zlib.error, MemoryError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"cannot read {path} as an image (PNG, JPEG, BMP, ... expected): {reason}") from None
    return to_chw(pixels)
