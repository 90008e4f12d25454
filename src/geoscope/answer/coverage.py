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
- the same test **one level down** (``typicality.G``, :attr:`Typicality.within`), where the training
  images of group ``G`` (a country) cover only some of its subgroups (first-level regions): among
  them, in the whitened space of the level above, with the group's images as the background. It
  scores the photos whose nearest group is ``G`` (the others: NaN, the test does not apply), so a
  street from a state the model never saw, which resembles the country well enough, is still
  compared with the states it knows.

Each test's score becomes the share of held-out validation items of the training regions that
score lower (an empirical p-value, through stored quantiles; below 0 for a score under all of
them); the coverage score is the smallest of the tests that apply, and the threshold keeps ``kept``
of the validation items in coverage. :meth:`Coverage.reasons` says which test flagged a photo.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .pca import centred_product, principal_axes

SCORE = "gallery+typicality"
"""The coverage score this version computes (bundles with another are treated as having none)."""
TESTS = ("gallery", "typicality")
QUANTILES = 201
TYPICALITY_DIM = 512
"""Principal components the typicality test keeps (fewer when there are fewer training images)."""
RIDGE = 1e-3
"""Added to the within-group covariance of the whitened components (unit variance each)."""
TYPICALITY = "typicality"
"""The typicality test's name, and its tensors' prefix (one level down: ``typicality.G``, group ``G``'s test)."""
PARTS = ("mean", "projection", "precision_root", "group_means")
TYPICALITY_KEYS = tuple(f"{TYPICALITY}.{part}" for part in PARTS)
WITHIN_DIM = 128
"""Components a test one level down keeps (it is fitted on one group's images, fewer than the level above)."""
WITHIN_TEST = re.compile(r"typicality(\.\d+)+")
"""The names of the tests one level down (or more): ``typicality.3``, ``typicality.3.0``."""


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
    gallery's space; NaN where a test does not apply); a model without a typicality test has the gallery test
    alone."""
    scores = {"gallery": gallery_scores(gallery_query, gallery, k, gallery_sq)}
    if typicality is not None:
        scores |= typicality.test_scores(features)
    return scores


@dataclass(frozen=True)
class Typicality:
    """The relative Mahalanobis test, as four stored matrices (and the same test one level down, where fitted).

    ``projection`` standardises the features, keeps the top principal components of the training
    images and whitens them (so that the distance to all training images is a squared norm);
    ``precision_root`` is a Cholesky factor of the inverse covariance within groups, and
    ``group_means`` are the groups' means already multiplied by it.
    """

    mean: np.ndarray
    projection: np.ndarray
    precision_root: np.ndarray
    group_means: np.ndarray
    within: dict[int, Typicality] = field(default_factory=dict)
    """One level down: for a group (its row in ``group_means``) whose training images cover only some of its
    subgroups, the same test among those, fitted on the group's images in this test's whitened space."""

    @classmethod
    def fit(cls, features: np.ndarray, groups: np.ndarray, dim: int = TYPICALITY_DIM,
            subgroups: np.ndarray | None = None) -> Typicality | None:
        """Fit on training images' features ``(n, f)`` and each one's group; ``None`` with too few images.
        With ``subgroups``, also the tests one level down (:meth:`fit_within`)."""
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
        test = cls.from_tensors(dict(zip(TYPICALITY_KEYS, (mean, projection.astype(np.float16), root, centres @ root),
                                         strict=True)))
        return test if test is None or subgroups is None else test.fit_within(x, groups, subgroups)

    def fit_within(self, features: np.ndarray, groups: np.ndarray, subgroups: np.ndarray) -> Typicality:
        """This test with the tests one level down, fitted on the training images it was fitted on (their
        features, groups, and each one's group one level down where a test there is wanted, "" where not: a group
        whose images cover all of its subgroups, an image outside the covered ones). Every group with two such
        subgroups or more gets one, on its images whitened as this test whitens them."""
        codes = np.unique(np.asarray(groups), return_inverse=True)[1]
        sub = np.asarray(subgroups).astype(str)
        inside = self.whiten(features)
        below = {}
        for g in range(len(self.group_means)):
            rows = (codes == g) & (sub != "")
            if len(np.unique(sub[rows])) > 1 and (fitted := Typicality.fit(inside[rows], sub[rows], WITHIN_DIM)):
                below[g] = fitted
        return replace(self, within=below)

    def whiten(self, features: np.ndarray) -> np.ndarray:
        """Features in the test's whitened space (the top principal components, unit variance each)."""
        return centred_product(features, self.mean, self.projection)

    def relative(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For rows already whitened: minus the relative Mahalanobis distance (higher: more like the training
        images) and the nearest group's row."""
        w = torch.from_numpy(np.asarray(w, dtype=np.float32))
        root, m = torch.from_numpy(self.precision_root), torch.from_numpy(self.group_means)
        a = w @ root
        to_groups = (a * a).sum(dim=1)[:, None] - 2.0 * (a @ m.T) + (m * m).sum(dim=1)[None]
        nearest = to_groups.min(dim=1)
        return -(nearest.values - (w * w).sum(dim=1)).numpy().astype(np.float64), nearest.indices.numpy()

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Minus the relative Mahalanobis distance of each row (higher: more like the training images)."""
        return self.relative(self.whiten(features))[0]

    def test_scores(self, features: np.ndarray, name: str = TYPICALITY) -> dict[str, np.ndarray]:
        """This test's scores (``name``) and, for each group with a test one level down (``name.G``), that test's
        scores of the rows whose nearest group is ``G`` (NaN elsewhere: it does not apply), and so on down."""
        w = self.whiten(features)
        score, nearest = self.relative(w)
        out = {name: score}
        for group, test in self.within.items():
            rows = nearest == group
            for below, values in test.test_scores(w[rows], f"{name}.{group}").items():
                out[below] = np.full(len(w), np.nan)
                out[below][rows] = values
        return out

    def tensors(self, prefix: str = TYPICALITY) -> dict[str, np.ndarray]:
        """The matrices as a bundle stores them (the projection, the largest, in float16), the tests one level
        down under ``prefix.G.``."""
        stored = (self.mean, self.projection.astype(np.float16), self.precision_root, self.group_means)
        out = {f"{prefix}.{part}": value for part, value in zip(PARTS, stored, strict=True)}
        for group, test in self.within.items():
            out |= test.tensors(f"{prefix}.{group}")
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], prefix: str = TYPICALITY) -> Typicality | None:
        """The test a bundle's tensors hold (in float32, to score with), or ``None`` when they hold none."""
        if f"{prefix}.mean" not in tensors:
            return None
        below = {int(m.group(1)) for key in tensors
                 if (m := re.fullmatch(re.escape(prefix) + r"\.(\d+)\.mean", key))}
        within = {g: t for g in sorted(below) if (t := cls.from_tensors(tensors, f"{prefix}.{g}")) is not None}
        return cls(*(np.asarray(tensors[f"{prefix}.{part}"], dtype=np.float32) for part in PARTS), within)


@dataclass(frozen=True)
class Covered:
    """What a test one level down compares with: a group (``name``, a country) and the subgroups of it (``level``,
    first-level regions) that the training images cover."""

    name: str
    level: str
    covered: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"group": self.name, "level": self.level, "covered": list(self.covered)}

    @classmethod
    def from_dict(cls, data: dict) -> Covered:
        return cls(str(data["group"]), str(data["level"]), tuple(str(c) for c in data["covered"]))


_PLURAL = {"country": "countries", "region": "regions", "label": "places"}


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
    within: dict[str, Covered] = field(default_factory=dict)
    """What each test one level down (``typicality.G``) compares with (none in older bundles)."""

    @property
    def too_few(self) -> bool:
        """Whether too few validation items were seen to place the threshold among them (fewer than
        ``1 / (1 − kept)``: 20 to keep 95 %): such a model says it cannot tell (``in_coverage`` null) instead
        of answering from a threshold beyond every item it saw."""
        return self.items is not None and self.items < self.least_items

    @property
    def least_items(self) -> int:
        """The fewest validation items a threshold (or a test's quantiles) can be placed among."""
        return math.ceil(1 / (1 - self.kept) - 1e-9)

    def says(self, score: float | None) -> bool | None:
        """Whether a photo of coverage ``score`` is within what the model knows (``None``: its score is unknown,
        or the model saw too few validation items to tell)."""
        if score is None or not math.isfinite(score) or self.too_few:
            return None
        return bool(score >= self.threshold)

    @classmethod
    def fit(cls, scores: dict[str, np.ndarray], kept: float, k: int, groups: str | None,
            within: dict[str, Covered] | None = None) -> Coverage:
        """Quantiles of each test's validation ``scores`` (the items it applies to; a test one level down that
        applies to fewer than :attr:`least_items` is left out), and the threshold that keeps ``kept`` of them."""
        grid = np.linspace(0.0, 1.0, QUANTILES)
        least = cls(0.0, {}, kept=kept).least_items
        applies = {name: np.asarray(s, dtype=np.float64)[np.isfinite(s)] for name, s in scores.items()}
        quantiles = {name: np.quantile(s, grid).tolist() for name, s in applies.items()
                     if len(s) and (len(s) >= least or not WITHIN_TEST.fullmatch(name))}
        unfitted = cls(0.0, quantiles)
        items = len(next(iter(scores.values())))
        return cls(float(np.quantile(unfitted.combine(scores), 1 - kept)), quantiles, k, kept, groups, items,
                   {name: c for name, c in (within or {}).items() if name in quantiles})

    def p_values(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each test's p-value (the share of validation items lower; +inf where the test does not apply)."""
        return {name: np.nan_to_num(_p_value(np.asarray(scores[name], dtype=np.float64),
                                             np.asarray(q, dtype=np.float64)), nan=np.inf)
                for name, q in self.quantiles.items()}

    def combine(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """The coverage score: the smallest p-value of the tests that apply."""
        return np.min(list(self.p_values(scores).values()), axis=0)

    def reasons(self, scores: dict[str, np.ndarray]) -> list[str | None]:
        """Why each row is out of coverage (the test that ranks it lowest, said for a person; ``None``: in
        coverage)."""
        p = self.p_values(scores)
        names = list(p)
        lowest = np.argmin(list(p.values()), axis=0)
        return [None if score >= self.threshold else self.reason(names[test])
                for score, test in zip(self.combine(scores).tolist(), lowest.tolist(), strict=True)]

    def reason(self, test: str) -> str:
        """Why a photo that ``test`` flags is out of coverage."""
        if test in self.within:
            part = self.within[test]
            return (f"it resembles {part.name}, but none of the {_PLURAL.get(part.level, part.level)} of it the "
                    f"model was trained on ({', '.join(part.covered)})")
        if test == TYPICALITY:
            return f"it resembles none of the {_PLURAL.get(self.groups or '', 'places')} the model was trained on"
        return "it is unlike every training photo"

    def to_dict(self) -> dict:
        out = {"score": SCORE, "k": self.k, "threshold": self.threshold, "kept": self.kept,
               "groups": self.groups, "items": self.items, "quantiles": self.quantiles}
        if self.within:
            out["within"] = {name: c.to_dict() for name, c in self.within.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict | None) -> Coverage | None:
        """The coverage a bundle's config describes; ``None`` when it has none (or another kind of score)."""
        if not data or data.get("score") != SCORE:
            return None
        items = data.get("items")
        return cls(float(data["threshold"]), {str(n): [float(v) for v in q] for n, q in data["quantiles"].items()},
                   int(data.get("k", 10)), float(data.get("kept", 0.95)), data.get("groups"),
                   None if items is None else int(items),
                   {str(n): Covered.from_dict(c) for n, c in (data.get("within") or {}).items()})


def _p_value(scores: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Share of validation items scoring lower (from their quantiles); beyond their range it goes on
    linearly, below 0 and above 1 (one whole range per unit), so that what lies far outside every
    validation item still ranks below the least typical of them."""
    span = max(float(quantiles[-1] - quantiles[0]), 1e-12)
    inside = np.interp(scores, quantiles, np.linspace(0.0, 1.0, len(quantiles)))
    below = (scores - quantiles[0]) / span
    above = 1.0 + (scores - quantiles[-1]) / span
    return np.where(scores < quantiles[0], below, np.where(scores > quantiles[-1], above, inside))
