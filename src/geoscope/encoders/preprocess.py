"""Image preprocessing that travels with each encoder, and the views of one image to encode.

Only PIL and numpy: resize the shorter side, take square crops, scale to [0, 1],
normalise by mean and std, and lay the result out as float32 CHW.
"""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from ..errors import GeoscopeError
from ..images import to_rgb

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
"""Resampling filters by name, as :class:`Preprocess` stores them."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How an encoder wants its pixels: resize, centre-crop a square, normalise.

    ``size`` is the shorter side after resizing (both sides when ``keep_aspect`` is false);
    ``crop_size`` the side of the square crop; ``mean`` and ``std`` apply per RGB channel
    to values scaled to [0, 1]; ``resample`` names a PIL filter (see :data:`RESAMPLE`).
    """

    size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: str = "bicubic"
    keep_aspect: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.resample not in RESAMPLE:
            raise ValueError(f"resample must be one of {', '.join(RESAMPLE)}, not {self.resample!r}")
        if not 0 < self.crop_size <= self.size:
            raise ValueError(f"crop_size must be in 1..size ({self.size}), not {self.crop_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values each, std positive")

    @property
    def key(self) -> str:
        """A short stable description, part of every cache key."""
        nums = ",".join(f"{v:.6g}" for v in (*self.mean, *self.std))
        mode = "" if self.keep_aspect else "-squash"
        return f"{self.size}c{self.crop_size}-{self.resample}{mode}-{nums}"

    def to_dict(self) -> dict:
        """Plain JSON-able fields (for model bundles)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @property
    def decode_size(self) -> tuple[int, int]:
        """The fewest pixels ``(width, height)`` an image must keep when decoded: both sides ≥ ``size``.

        Pass it to :func:`geoscope.images.open_image` as ``min_size``: a large JPEG is then
        decoded at a reduced scale (libjpeg's DCT scaling) before :meth:`resize` shrinks it.
        """
        return self.size, self.size

    def resized(self, width: int, height: int) -> tuple[int, int]:
        """The size an image of ``width``×``height`` is resized to: shorter side ``size`` (or ``size``×``size``)."""
        if not self.keep_aspect:
            return self.size, self.size
        scale = self.size / min(width, height)
        return max(self.size, round(width * scale)), max(self.size, round(height * scale))

    def resize(self, image: Image.Image) -> Image.Image:
        """The image resized so its shorter side is ``size`` (or to ``size``×``size``)."""
        target = self.resized(*image.size)
        return image if target == image.size else image.resize(target, RESAMPLE[self.resample])

    def crop_boxes(self, width: int, height: int, n: int = 1) -> list[tuple[int, int, int, int]]:
        """``n`` square crop boxes evenly spaced along the long side (centred across the short one)."""
        c = self.crop_size
        if n == 1:
            left, top = (width - c) // 2, (height - c) // 2
            return [(left, top, left + c, top + c)]
        along = np.linspace(0, max(width, height) - c, n).round().astype(int)
        if width >= height:
            top = (height - c) // 2
            return [(int(x), top, int(x) + c, top + c) for x in along]
        left = (width - c) // 2
        return [(left, int(y), left + c, int(y) + c) for y in along]

    def crop_fractions(self, width: int, height: int, n: int = 1) -> list[tuple[float, float, float, float]]:
        """Where the ``n`` square crops of an image of ``width``×``height`` lie in it: ``(left, top, right, bottom)``
        as fractions of its width and height (after :meth:`resize`, which keeps them)."""
        w, h = self.resized(width, height)
        return [(left / w, top / h, right / w, bottom / h) for left, top, right, bottom in self.crop_boxes(w, h, n)]

    @functools.cached_property
    def _shift_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 ``(3, 1, 1)`` each: ``255·mean`` and ``1 / (255·std)`` per channel."""
        shift = np.asarray(self.mean, dtype=np.float32) * 255.0
        scale = 1.0 / (np.asarray(self.std, dtype=np.float32) * 255.0)
        return shift[:, None, None], scale[:, None, None]

    def to_array(self, image: Image.Image | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """An RGB image (or its ``(h, w, 3)`` uint8 pixels) as normalised float32 CHW, without resizing or cropping.

        ``(level - 255·mean) · (1 / (255·std))`` in float32, in place over one CHW buffer
        (7× faster than a lookup table, which converts every index to 64 bits). ``out``, when
        given, is written instead of a new array (a slot of a batch).
        """
        pixels = np.asarray(image)
        shift, scale = self._shift_scale
        if out is None:
            out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
        out[...] = pixels.transpose(2, 0, 1)
        out -= shift
        out *= scale
        return out

    def __call__(self, image: Image.Image) -> np.ndarray:
        """Resize, centre-crop and normalise one RGB image: float32 ``(3, crop_size, crop_size)``."""
        return self.views(image, Views())[0]

    def views(self, image: Image.Image | np.ndarray, views: Views, out: np.ndarray | None = None) -> np.ndarray:
        """Every view of one image (any mode, read as 8-bit RGB; or its ``(h, w, 3)`` uint8 RGB pixels, as
        :func:`geoscope.images.read_rgb` gives them): float32 ``(views.count, 3, crop_size, crop_size)``.

        ``out``, when given, receives them (a slice of a batch: no copy to assemble it). Pixels of the
        size the encoder wants are flipped and cropped as array views, never copied into a PIL image.
        """
        if out is None:
            out = np.empty((views.count, 3, self.crop_size, self.crop_size), dtype=np.float32)
        if isinstance(image, np.ndarray):
            height, width = image.shape[:2]
            if self.resized(width, height) == (width, height):
                pixels = image[:, ::-1] if views.hflip else image
                for slot, (left, top, right, bottom) in zip(out, self.crop_boxes(width, height, views.crops),
                                                            strict=True):
                    self.to_array(pixels[top:bottom, left:right], out=slot)
                return out
            image = Image.fromarray(image)
        image = to_rgb(image)
        if views.hflip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image = self.resize(image)
        for slot, box in zip(out, self.crop_boxes(*image.size, n=views.crops), strict=True):
            self.to_array(image if box == (0, 0, *image.size) else image.crop(box), out=slot)
        return out


_VIEW_TOKEN = re.compile(r"^(?:(?P<flip>hflip|flip)|(?P<plain>plain|none|centre|center)|"
                         r"(?P<grid>grid)|crops=?(?P<crops>\d+))$")


@dataclass(frozen=True)
class Views:
    """Which views of each image to encode.

    ``hflip`` mirrors the image left–right first: a separate cached variant, for train-time
    augmentation or flip test-time augmentation (average it with the plain variant).
    ``crops`` square crops evenly spaced along the long side: 1 is the centre crop, 3 is
    left, centre and right (for the 448×224 two-view images of ``us-west``, 2 gives the
    two halves). Written as text: ``plain``, ``hflip``, ``grid`` (= ``crops3``), ``crops2``,
    combined with ``+`` (``hflip+grid``).
    """

    hflip: bool = False
    crops: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.crops <= 16:
            raise GeoscopeError(f"crops must be between 1 and 16, not {self.crops}")

    @property
    def count(self) -> int:
        """Number of views per image."""
        return self.crops

    @property
    def key(self) -> str:
        """Canonical text form, part of the cache key (``plain``, ``hflip``, ``crops3``, …)."""
        parts = (["hflip"] if self.hflip else []) + ([f"crops{self.crops}"] if self.crops > 1 else [])
        return "+".join(parts) or "plain"

    @classmethod
    def parse(cls, spec: str | Views | None) -> Views:
        """Views from their text form (or pass a :class:`Views` through; ``None`` is plain)."""
        if spec is None or isinstance(spec, Views):
            return spec or cls()
        hflip, crops = False, 1
        for token in filter(None, (t.strip().lower() for t in re.split(r"[+,]", spec))):
            match = _VIEW_TOKEN.match(token)
            if not match:
                raise GeoscopeError(
                    f"unknown view {token!r} in {spec!r}: use plain, hflip, grid or cropsN, joined by '+'"
                )
            if match["flip"]:
                hflip = True
            elif match["grid"]:
                crops = 3
            elif match["crops"]:
                crops = int(match["crops"])
        return cls(hflip=hflip, crops=crops)
