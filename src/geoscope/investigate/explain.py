"""Where in the photo: how much each part of the frame moves the answer, by occlusion.

The frame the model reads (its centre crop, as preprocessed) is cut into a grid; each cell in turn is
hidden (set to the encoder's mean colour, zero after normalisation) and the image answered again, all in
one batch. A cell's weight is how much hiding it lowers the log-odds of the answer's label, and of its
country (log-odds, not probability: a photo answered at 100 % still shows which cells carry the answer):
positive where the frame points to the answer, negative where it points elsewhere.
``benchmarks/explain.py`` measures that hiding the heaviest cells lowers the answer more than hiding as many
cells at random (faithfulness), and what it costs per image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..encoders.preprocess import Views
from ..errors import BadImageError
from ..fileio import atomic_open
from ..images import read_rgb

if TYPE_CHECKING:
    from ..predict import GeoModel

Box = tuple[float, float, float, float]
"""``(left, top, right, bottom)`` as fractions of an image's width and height."""
GRID = 8
"""Cells per side of the occlusion grid (64 cells of 28 px on a 224 px frame)."""


@dataclass
class Explanation:
    """How much hiding each cell of the frame lowers the answer's probability and its country's."""

    image: str
    label: str
    """The answer's label (the model's area the answer comes from)."""
    country: str
    probability: float
    """The label's probability on the whole frame."""
    country_probability: float
    label_drop: np.ndarray
    """``(grid, grid)``: the fall of the label's log-odds when each cell is hidden (rows top to bottom)."""
    country_drop: np.ndarray
    frame: np.ndarray
    """``(c, c, 3)`` uint8: the frame the model read (its first crop)."""
    boxes: list[Box] = field(default_factory=list)
    """Where the frame lies in the photo (each crop's square, ``(left, top, right, bottom)`` as fractions of the
    photo's width and height): every crop had the same cell hidden, so the map covers each of them."""

    def to_dict(self) -> dict:
        return {"image": self.image, "label": self.label, "country": self.country,
                "probability": round(self.probability, 6), "country_probability": round(self.country_probability, 6),
                "label_drop": np.round(self.label_drop, 6).tolist(),
                "country_drop": np.round(self.country_drop, 6).tolist(),
                "boxes": [[round(v, 6) for v in box] for box in self.boxes]}


def occluded(views: np.ndarray, cells: Sequence[tuple[int, int]], grid: int = GRID) -> np.ndarray:
    """A copy of preprocessed ``views`` ``(crops, 3, c, c)`` with ``cells`` (row, column) of each crop hidden."""
    out = views.copy()
    edges = np.linspace(0, views.shape[-1], grid + 1).round().astype(int)
    for row, column in cells:
        out[:, :, edges[row]:edges[row + 1], edges[column]:edges[column + 1]] = 0.0
    return out


def answer_log_odds(model: GeoModel, variants: Sequence[np.ndarray], label: int | None = None,
                    batch_size: int = 16) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """The answer's label (of the first variant, unless given) and, for every variant, the log-odds of that label
    and of its country, and the label's probability."""
    features = model.view_features(variants, batch_size)
    p = model.probabilities(model.embed(features), features).astype(np.float64)
    answerer = model.answerer
    if label is None:
        label = int(answerer.best(p[:1])[0])
    country = answerer.country == answerer.country[label]
    return label, _log_odds(p, np.arange(p.shape[1]) == label), _log_odds(p, country), p[:, label]


def _log_odds(p: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """log P(inside) − log P(outside) per row, from the probabilities of each side (never infinite)."""
    return np.log(p[:, inside].sum(axis=1).clip(1e-30)) - np.log(p[:, ~inside].sum(axis=1).clip(1e-30))


class Frame(NamedTuple):
    """An image as the model reads it (:func:`read_frame`)."""

    views: np.ndarray
    """Preprocessed views ``(crops, 3, c, c)``."""
    boxes: list[Box]
    """Where each view lies in the image (:attr:`Explanation.boxes`)."""
    pixel_bytes: int
    """The bytes of the RGB pixels it was decoded to (JPEGs are decoded at a reduced scale where they can be)."""


def read_frame(model: GeoModel, source: str | os.PathLike[str] | bytes) -> Frame:
    """An image (a file, or its bytes) as the model reads it; :class:`BadImageError` naming it when it cannot be
    read."""
    preprocess = model.encoder.preprocess
    image = read_rgb(source, min_size=preprocess.decode_size)
    width, height = (image.shape[1], image.shape[0]) if isinstance(image, np.ndarray) else image.size
    crops = model.image_side.crops
    return Frame(preprocess.views(image, Views(crops=crops)), preprocess.crop_fractions(width, height, crops),
                 3 * width * height)


def frame_views(model: GeoModel, path: str | os.PathLike[str]) -> np.ndarray:
    """The image as the model reads it: preprocessed views ``(crops, 3, c, c)`` (:func:`read_frame`)."""
    return read_frame(model, path).views


def explain(model: GeoModel, paths: Sequence[str | os.PathLike[str]], *, grid: int = GRID,
            batch_size: int = 16) -> list[Explanation | BadImageError]:
    """An occlusion map for each image (or the one-line error of an image that cannot be read)."""
    out: list[Explanation | BadImageError] = []
    for path in paths:
        try:
            views, boxes, _ = read_frame(model, path)
        except BadImageError as exc:
            out.append(exc)
            continue
        out.append(explain_views(model, views, str(path), boxes, grid=grid, batch_size=batch_size))
    return out


def explain_views(model: GeoModel, views: np.ndarray, image: str, boxes: Sequence[Box] = (), *, grid: int = GRID,
                  batch_size: int = 16) -> Explanation:
    """The occlusion map of one image already read (:func:`read_frame`): its frame and ``grid``² copies of it with
    one cell hidden, answered in one batch (``grid``² + 1 encoder runs)."""
    cells = [(r, c) for r in range(grid) for c in range(grid)]
    variants = [views, *(occluded(views, [cell], grid) for cell in cells)]
    label, odds, country, p = answer_log_odds(model, variants, batch_size=batch_size)
    preprocess = model.encoder.preprocess
    shift, scale = (np.asarray(v, dtype=np.float32)[:, None, None] for v in (preprocess.mean, preprocess.std))
    frame = ((views[0] * scale + shift) * 255).clip(0, 255).round().astype(np.uint8).transpose(1, 2, 0)
    answerer = model.answerer
    return Explanation(image, str(answerer.names[label]), str(answerer.country[label]), float(p[0]),
                       float(1 / (1 + np.exp(-country[0]))), (odds[0] - odds[1:]).reshape(grid, grid),
                       (country[0] - country[1:]).reshape(grid, grid), frame, list(boxes))


def draw(explanation: Explanation, path: str | os.PathLike[str], answer_name: str | None = None) -> Path:
    """The two maps over the frame as one PNG, written atomically: what points to the answer, what to its
    country (red: hiding it lowers the answer's log-odds; blue: raises them)."""
    import matplotlib

    matplotlib.use("Agg")  # no screen: a file
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(8, 4.3), dpi=100)
    size = explanation.frame.shape[0]
    for ax, drop, title, p in (
        (axes[0], explanation.label_drop, answer_name or explanation.label, explanation.probability),
        (axes[1], explanation.country_drop, explanation.country or "its country", explanation.country_probability),
    ):
        limit = max(float(np.abs(drop).max()), 1e-6)
        ax.imshow(explanation.frame)
        ax.imshow(drop, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.55, interpolation="bilinear",
                  extent=(0, size, size, 0))
        ax.set_title(f"{title}\n{p:.0%} on the whole frame", fontsize=9)
        ax.set_axis_off()
    figure.suptitle(f"{Path(explanation.image).name}: where the frame points (red) or points away (blue)",
                    fontsize=9, y=0.99)
    figure.tight_layout(rect=(0, 0, 1, 0.94))
    target = Path(path)
    with atomic_open(target) as handle:
        figure.savefig(handle, format="png")
    plt.close(figure)
    return target
