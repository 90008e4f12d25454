"""Whether a photo is like what a model was trained on ("don't know"): two tests, one threshold.

- **gallery**: minus the mean distance of the photo's features to its ``k`` nearest training
  images in the kNN gallery. It tells a street photo from anything that is not one (a blank
  frame, noise, a rotated or blurred photo), but not a street from another country.
- **typicality**: the relative Mahalanobis distance (Ren et al., 2021): how far the features lie
  from the nearest *group* of training images (its mean, under the covariance within groups),
  minus how far they lie from all training images. The groups are the coarsest level of the
  label hierarchy that splits the training data (countries; regions in a one-country model;
  the labels themselves in a one-region model). A street from a region the model never saw
  sits between the groups, in directions that vary between them and little within them.

Each test's score becomes the share of held-out validation items of the training regions that
score lower (an empirical p-value, through stored quantiles; below 0 for a score under all of
them); the coverage score is the smaller of the two, and the threshold keeps ``kept`` of the
validation items in coverage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .pca import principal_axes

SCORE = "gallery+typicality"
"""The coverage score this version computes (bundles with another are treated as having none)."""
TESTS = ("gallery", "typicality")
QUANTILES = 201
TYPICALITY_DIM = 512
"""Principal components the typicality test keeps (fewer when there are fewer training images)."""
RIDGE = 1e-3
"""Added to the within-group covariance of the whitened components (unit variance each)."""
TYPICALITY_KEYS = ("typicality.mean", "typicality.projection", "typicality.precision_root",
                   "typicality.group_means")


def gallery_scores(query: np.ndarray, gallery: np.ndarray, k: int,
                   gallery_sq: np.ndarray | None = None) -> np.ndarray:
    """Minus the mean Euclidean distance of each query row to its ``k`` nearest gallery rows (in torch: its
    matrix products use the threads the caller gives torch, see :mod:`geoscope.threads`).

    ``gallery_sq`` (optional) holds the gallery rows' squared norms, computed once by the caller.
    """
    g = torch.from_numpy(np.asarray(gallery, dtype=np.float32))
    g_sq = (g * g).sum(dim=1) if gallery_sq is None else torch.from_numpy(np.asarray(gallery_sq, dtype=np.float32))
    k = max(1, min(k, len(g)))
    out = np.empty(len(query))
    for start in range(0, len(query), 1024):
        q = torch.from_numpy(np.asarray(query[start : start + 1024], dtype=np.float32))
        # |g|² − 2 q·g in one matrix product; |q|², the same along a row, is added to the k nearest only
        nearer = torch.addmm(g_sq.expand(len(q), -1), q, g.T, alpha=-2.0)
        nearest = torch.topk(nearer, k, dim=1, largest=False, sorted=False).values + (q * q).sum(dim=1)[:, None]
        out[start : start + 1024] = (-nearest.clamp(min=0.0).sqrt().mean(dim=1)).numpy()
    return out


def scores_by_test(features: np.ndarray, gallery_query: np.ndarray, gallery: np.ndarray, k: int,
                   typicality: Typicality | None, gallery_sq: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each coverage test's score for rows of image features (``gallery_query``: the same rows in the kNN
    gallery's space); a model without a typicality test has the gallery test alone."""
    scores = {"gallery": gallery_scores(gallery_query, gallery, k, gallery_sq)}
    if typicality is not None:
        scores["typicality"] = typicality.scores(features)
    return scores


@dataclass(frozen=True)
class Typicality:
    """The relative Mahalanobis test, as four stored matrices.

    ``projection`` standardises the features, keeps the top principal components of the training
    images and whitens them (so that the distance to all training images is a squared norm);
    ``precision_root`` is a Cholesky factor of the inverse covariance within groups, and
    ``group_means`` are the groups' means already multiplied by it.
    """

    mean: np.ndarray
    projection: np.ndarray
    precision_root: np.ndarray
    group_means: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, groups: np.ndarray, dim: int = TYPICALITY_DIM) -> Typicality | None:
        """Fit on training images' features ``(n, f)`` and each one's group; ``None`` with too few images."""
        x = np.asarray(features, dtype=np.float64)
        names, codes = np.unique(np.asarray(groups), return_inverse=True)
        dim = min(dim, x.shape[1], len(x) - len(names) - 1)
        if dim < 1 or len(names) < 2:
            return None
        mean = x.mean(axis=0)
        scale = x.std(axis=0) + 1e-6
        s, vt = principal_axes((x - mean) / scale, dim)
        spread = s / np.sqrt(len(x))
        keep = spread > 1e-6 * spread[0]
        projection = (vt[keep] / scale).T / spread[keep]
        w = (x - mean) @ projection
        centres = np.stack([w[codes == g].mean(axis=0) for g in range(len(names))])
        within = np.cov((w - centres[codes]).T) + RIDGE * np.eye(w.shape[1])
        root = np.linalg.cholesky(np.linalg.inv(within))
        return cls.from_tensors(dict(zip(TYPICALITY_KEYS, (mean, projection.astype(np.float16), root, centres @ root),
                                         strict=True)))

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Minus the relative Mahalanobis distance of each row (higher: more like the training images)."""
        mean, projection, root, m = (torch.from_numpy(v) for v in
                                     (self.mean, self.projection, self.precision_root, self.group_means))
        w = (torch.from_numpy(np.asarray(features, dtype=np.float32)) - mean) @ projection
        a = w @ root
        to_groups = (a * a).sum(dim=1)[:, None] - 2.0 * (a @ m.T) + (m * m).sum(dim=1)[None]
        return -(to_groups.min(dim=1).values - (w * w).sum(dim=1)).numpy().astype(np.float64)

    def tensors(self) -> dict[str, np.ndarray]:
        """The matrices as a bundle stores them (the projection, the largest, in float16)."""
        stored = (self.mean, self.projection.astype(np.float16), self.precision_root, self.group_means)
        return dict(zip(TYPICALITY_KEYS, stored, strict=True))

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray]) -> Typicality | None:
        """The test a bundle's tensors hold (in float32, to score with), or ``None`` when they hold none."""
        if TYPICALITY_KEYS[0] not in tensors:
            return None
        return cls(*(np.asarray(tensors[k], dtype=np.float32) for k in TYPICALITY_KEYS))


@dataclass(frozen=True)
class Coverage:
    """The coverage threshold and how each test's score maps to a p-value (its validation quantiles)."""

    threshold: float
    quantiles: dict[str, list[float]]
    k: int = 10
    kept: float = 0.95
    groups: str | None = None
    """The level of the label hierarchy whose groups the typicality test compares with."""
    items: int | None = None
    """Validation items the threshold was fitted on (``None``: not recorded, older bundles)."""

    @property
    def too_few(self) -> bool:
        """Whether too few validation items were seen to place the threshold among them (fewer than
        ``1 / (1 − kept)``: 20 to keep 95 %): such a model says it cannot tell (``in_coverage`` null) instead
        of answering from a threshold beyond every item it saw."""
        return self.items is not None and self.items < math.ceil(1 / (1 - self.kept) - 1e-9)

    def says(self, score: float | None) -> bool | None:
        """Whether a photo of coverage ``score`` is within what the model knows (``None``: its score is unknown,
        or the model saw too few validation items to tell)."""
        if score is None or not math.isfinite(score) or self.too_few:
            return None
        return bool(score >= self.threshold)

    @classmethod
    def fit(cls, scores: dict[str, np.ndarray], kept: float, k: int, groups: str | None) -> Coverage:
        """Quantiles of each test's validation ``scores``, and the threshold that keeps ``kept`` of them."""
        grid = np.linspace(0.0, 1.0, QUANTILES)
        quantiles = {name: np.quantile(s, grid).tolist() for name, s in scores.items()}
        unfitted = cls(0.0, quantiles)
        items = min(len(s) for s in scores.values())
        return cls(float(np.quantile(unfitted.combine(scores), 1 - kept)), quantiles, k, kept, groups, items)

    def combine(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """The coverage score: the smallest p-value of the tests (the share of validation items lower)."""
        return np.min([_p_value(np.asarray(scores[name], dtype=np.float64), np.asarray(q, dtype=np.float64))
                       for name, q in self.quantiles.items()], axis=0)

    def to_dict(self) -> dict:
        return {"score": SCORE, "k": self.k, "threshold": self.threshold, "kept": self.kept,
                "groups": self.groups, "items": self.items, "quantiles": self.quantiles}

    @classmethod
    def from_dict(cls, data: dict | None) -> Coverage | None:
        """The coverage a bundle's config describes; ``None`` when it has none (or another kind of score)."""
        if not data or data.get("score") != SCORE:
            return None
        items = data.get("items")
        return cls(float(data["threshold"]), {str(n): [float(v) for v in q] for n, q in data["quantiles"].items()},
                   int(data.get("k", 10)), float(data.get("kept", 0.95)), data.get("groups"),
                   None if items is None else int(items))


def _p_value(scores: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Share of validation items scoring lower (from their quantiles); beyond their range it goes on
    linearly, below 0 and above 1 (one whole range per unit), so that what lies far outside every
    validation item still ranks below the least typical of them."""
    span = max(float(quantiles[-1] - quantiles[0]), 1e-12)
    inside = np.interp(scores, quantiles, np.linspace(0.0, 1.0, len(quantiles)))
    below = (scores - quantiles[0]) / span
    above = 1.0 + (scores - quantiles[-1]) / span
    return np.where(scores < quantiles[0], below, np.where(scores > quantiles[-1], above, inside))
