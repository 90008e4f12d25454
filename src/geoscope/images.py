"""Reading images safely: one clear error for a missing, corrupt, truncated, non-image or huge file."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadImageError

MAX_PIXELS = 80_000_000
"""Largest image accepted (80 MP); beyond it decoding is refused as a likely decompression bomb."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".heic"})


def open_image(
    source: str | os.PathLike[str] | bytes, *, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """Decode an image fully into RGB, applying its EXIF orientation.

    Raises :class:`BadImageError` naming the file when it cannot be read, is not an image,
    is truncated or corrupt, or has more than ``max_pixels`` pixels.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise BadImageError(f"{name}: image file not found") from None
    except IsADirectoryError:
        raise BadImageError(f"{name}: is a directory, not an image") from None
    except OSError as exc:
        raise BadImageError(f"{name}: cannot open ({exc.strerror or exc})") from None
    with handle:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(handle)
                width, height = image.size
                if width * height > max_pixels:
                    raise BadImageError(
                        f"{name}: image is {width}×{height} pixels, over the {max_pixels:,} limit "
                        "(possible decompression bomb)"
                    )
                image.load()
                image = ImageOps.exif_transpose(image)
                return image.convert("RGB")
        except BadImageError:
            raise
        except UnidentifiedImageError:
            raise BadImageError(f"{name}: not an image file (unrecognised format)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BadImageError(f"{name}: image too large (possible decompression bomb)") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise BadImageError(f"{name}: corrupt or truncated image ({exc})") from None


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """Whether the file name carries a known image suffix."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES
