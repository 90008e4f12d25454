"""Reading images safely into 8-bit RGB: one clear error for a missing, corrupt, truncated, non-image or huge file.

Every mode PIL opens becomes the RGB a viewer would show:

- 16-bit grayscale (``I;16``, ``I;16B``, …) is scaled by 1/257 (65535 → 255), never clipped
  to white; 32-bit ``I`` and float ``F`` are scaled by the smallest range that holds their
  largest value: 0–1 (``F`` only), 0–255, 0–65535, else their own maximum; negative and NaN
  values become 0.
- Transparency (``RGBA``, ``LA``, ``PA``, ``P`` or ``L``/``RGB`` with a transparent colour) is
  composited on white, as a page shows it: the colour under a transparent pixel is arbitrary
  (often black) and is never shown.
- ``1``, ``L``, ``P``, ``CMYK`` (also Adobe's inverted CMYK JPEGs), ``YCbCr``, ``HSV`` go
  through PIL's conversion; ``LAB`` through a CIELAB → sRGB transform.
- The EXIF orientation is applied.

JPEGs can be decoded at reduced size (libjpeg's DCT scaling by 1/2, 1/4 or 1/8) when the
caller needs only ``min_size`` pixels: a 12-megapixel photo wanted at 224 px decodes about
5× faster and shrinks about 30× faster. The decompression-bomb limit applies to the full
declared size, checked before any pixel is decoded.

:func:`read_rgb` is :func:`open_image` for the encoders' hot path: a colour JPEG (every street-view
frame, every phone photo, at whichever DCT scale and EXIF orientation) goes straight to a pixel array
through libjpeg-turbo (``simplejpeg``): the same pixels, in half the time of PIL's decode and copy at
full scale, and at reduced scale without taking Python's lock between chunks of the file, so that the
decoding threads run beside the encoder. PNG, WebP, HEIC and the other JPEGs (grayscale, CMYK) take PIL's path.
"""

from __future__ import annotations

import functools
import io
import os
import stat
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadImageError, quote_name

MAX_PIXELS = 80_000_000
"""Largest image accepted (80 MP); beyond it decoding is refused as a likely decompression bomb."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif"})

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_GRAY_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N", "I;16S"})
_HEIF_SUFFIXES = frozenset({".heic", ".heif"})
_ROTATED = frozenset({5, 6, 7, 8})
"""EXIF orientations that swap width and height."""
_JPEG_MAGIC = b"\xff\xd8\xff"


_SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                  (stat.S_ISSOCK, "a socket"))


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for reading in binary, or one :class:`BadImageError` naming it: only a regular file is an
    image (a FIFO would block the open, a device such as ``/dev/zero`` would never end)."""
    name = quote_name(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens at once, then is refused
    except FileNotFoundError:
        raise BadImageError(f"{name}: image file not found") from None
    except IsADirectoryError:
        raise BadImageError(f"{name}: is a directory, not an image") from None
    except OSError as exc:
        raise BadImageError(f"{name}: cannot open ({exc.strerror or exc})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise BadImageError(f"{name}: is a directory, not an image")
        kind = next((said for test, said in _SPECIAL_FILES if test(mode)), "a special file")
        raise BadImageError(f"{name}: is {kind}, not a regular file: skipped")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def open_image(
    source: str | os.PathLike[str] | bytes, *, max_pixels: int = MAX_PIXELS,
    min_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode an image into 8-bit RGB, applying its EXIF orientation.

    ``min_size`` ``(width, height)``, as displayed: the caller only needs that many pixels, so
    a JPEG at least twice as large on both sides is decoded at the smallest DCT scale
    (1/2, 1/4, 1/8) still at least that large; smaller images decode exactly as without it.
    Raises :class:`BadImageError` naming the file when it cannot be read, is not an image,
    is truncated or corrupt, or has more than ``max_pixels`` pixels.
    """
    name = "<bytes>" if isinstance(source, bytes) else quote_name(source)
    handle = io.BytesIO(source) if isinstance(source, bytes) else open_regular(source)
    _register_optional_formats()
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
                if min_size is not None:
                    _reduce_on_decode(image, min_size)
                image.load()
                image = ImageOps.exif_transpose(image)
                return to_rgb(image)
        except BadImageError:
            raise
        except UnidentifiedImageError:
            if not isinstance(source, bytes) and Path(source).suffix.lower() in _HEIF_SUFFIXES:
                raise BadImageError(f"{name}: reading HEIC/HEIF photos needs the pillow-heif package "
                                    "(pip install pillow-heif)") from None
            raise BadImageError(f"{name}: not an image file (unrecognised format)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BadImageError(f"{name}: image too large (possible decompression bomb)") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error) as exc:
            raise BadImageError(f"{name}: corrupt or truncated image ({_one_line(exc)})") from None


def read_rgb(source: str | os.PathLike[str] | bytes, *, max_pixels: int = MAX_PIXELS,
             min_size: tuple[int, int] | None = None) -> np.ndarray | Image.Image:
    """:func:`open_image`, faster for the common JPEG: an ``(h, w, 3)`` uint8 array (possibly a strided view) for a
    colour JPEG, decoded by libjpeg-turbo at the scale :func:`open_image` would take and turned upright by its EXIF
    orientation as :func:`open_image` turns it (the same pixels); else the PIL image :func:`open_image` reads (or its
    one clear error)."""
    pixels = _jpeg_pixels(source, max_pixels, min_size)
    return open_image(source, max_pixels=max_pixels, min_size=min_size) if pixels is None else pixels


_TURNS = {
    1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: a.transpose(1, 0, 2)[::-1],
}
"""EXIF orientation → the array view that turns the stored pixels upright (what ``ImageOps.exif_transpose`` does)."""


def _jpeg_pixels(source: str | os.PathLike[str] | bytes, max_pixels: int,
                 min_size: tuple[int, int] | None) -> np.ndarray | None:
    """The upright pixels of a YCbCr (or Adobe RGB) JPEG decoded by libjpeg-turbo, at the DCT scale PIL's draft mode
    takes for ``min_size`` (1/2, 1/4 or 1/8: the same pixels, and the whole decode without the GIL); ``None`` for any
    other file, and for any file it cannot read (PIL then reads it, or names what is wrong)."""
    import simplejpeg

    try:
        if isinstance(source, bytes):
            data = source
        else:
            with open_regular(source) as handle:  # the rest of a file only when it starts as a JPEG does
                data = handle.read(len(_JPEG_MAGIC))
                data += handle.read() if data == _JPEG_MAGIC else b""
        if not data.startswith(_JPEG_MAGIC):
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))  # reads the header and the EXIF block only
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
        if image.format != "JPEG" or image.mode != "RGB" or width * height > max_pixels or orientation not in _TURNS:
            return None
        scale = 1 if min_size is None else _draft_scale(image, min_size)
        wanted = (-(-width // scale), -(-height // scale))  # PIL's draft size: sides rounded up
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=wanted[0], min_height=wanted[1])
        if pixels.shape[:2] != wanted[::-1]:
            return None
        return _TURNS[orientation](pixels)
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, struct.error,
            UnidentifiedImageError, Image.DecompressionBombError, BadImageError):
        return None


@functools.cache
def _register_optional_formats() -> None:
    """Let PIL open HEIC/HEIF (phone photos) when the optional ``pillow-heif`` package is installed."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()


def _reduce_on_decode(image: Image.Image, min_size: tuple[int, int]) -> None:
    """Ask a JPEG decoder for the smallest DCT scale that keeps ``min_size`` (no-op below 2×)."""
    if image.format == "JPEG" and _draft_scale(image, min_size) > 1:  # at scale 1 the decode stays exact
        image.draft(image.mode, _stored_size(image, min_size))


def _stored_size(image: Image.Image, min_size: tuple[int, int]) -> tuple[int, int]:
    """``min_size`` (as displayed) as the file stores it: turned when the EXIF orientation turns the image."""
    want_w, want_h = (max(1, int(v)) for v in min_size)
    return (want_h, want_w) if image.getexif().get(0x0112) in _ROTATED else (want_w, want_h)


def _draft_scale(image: Image.Image, min_size: tuple[int, int]) -> int:
    """The DCT scale (1, 2, 4 or 8) a JPEG is decoded at for ``min_size``, as PIL's draft mode takes it: the largest
    that keeps both sides at least ``min_size``."""
    want_w, want_h = _stored_size(image, min_size)
    width, height = image.size
    times = min(width // want_w, height // want_h)
    return next((s for s in (8, 4, 2) if times >= s), 1)


def to_rgb(image: Image.Image) -> Image.Image:
    """The 8-bit RGB picture of an image of any PIL mode (see the module docstring for the rules)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _WIDE_GRAY_MODES:
        return Image.fromarray(_gray_to_uint8(np.asarray(image), mode), "L").convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms

        transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                            "LAB", "RGB")
        return ImageCms.applyTransform(image, transform)
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("LA").convert("RGBA") if mode == "La" else image.convert("RGBA")
        page = Image.new("RGBA", image.size, (255, 255, 255, 255))
        page.alpha_composite(rgba)
        return page.convert("RGB")
    return image.convert("RGB")


def _gray_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """16-bit, 32-bit or float gray levels → uint8, by the range the mode (or the largest value) implies."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(values.max(initial=0.0))
    if mode.startswith("I;16"):
        full = 65535.0
    else:
        ranges = (1.0, 255.0, 65535.0) if mode == "F" else (255.0, 65535.0)
        full = next((r for r in ranges if top <= r), top)
    return np.clip(np.rint(values * (255.0 / full)), 0, 255).astype(np.uint8)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """Whether the file name carries a known image suffix."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES
