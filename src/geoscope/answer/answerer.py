"""What a person reads: ranked guesses with names, the hierarchy, coverage and confidence.

Decided once here; the table, JSON, CSV/GeoJSON outputs, the report and the web page all
render a :class:`Prediction`. A model's probabilities over its labels become guesses at
one of three levels (``place``: the labels; ``region`` and ``country``: their summed
probabilities), together with the probability of each country and region, whether the
photo is within what the model knows (``in_coverage``) and the calibrated probability that
the top guess is within 25, 200 and 750 km.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import GeoscopeError
from ..geo.sphere import EARTH_RADIUS_KM, GEOSCORE_SCALE_KM, haversine_km, to_unit_vectors
from .coverage import Coverage

LEVELS = ("place", "region", "country")
CONFIDENCE_KM = (25, 200, 750)
LEVEL_ROWS = 5
"""Entries listed per level of the hierarchy."""
BEST_CANDIDATES = 32
"""The most probable labels among which :func:`best_guesses` chooses where."""
BEST_LOCAL_KM = 50.0
"""…and then the most probable label within this distance of that choice."""


@dataclass(frozen=True)
class Guess:
    """One ranked guess: where, which place (and its region and country), how likely."""

    lat: float
    lon: float
    label: str
    probability: float
    place: str = ""
    region: str = ""
    country: str = ""

    def to_dict(self) -> dict:
        return {"lat": round(self.lat, 6), "lon": round(self.lon, 6), "label": self.label,
                "place": self.place, "region": self.region, "country": self.country,
                "probability": round(self.probability, 6)}


@dataclass
class Prediction:
    """The answer for one image (or one place seen from several views), or why there is none."""

    image: str
    guesses: list[Guess]
    error: str | None = None
    views: list[str] | None = None
    in_coverage: bool | None = None
    coverage_score: float | None = None
    confidence: dict[str, float] | None = None
    levels: dict[str, list[dict]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out: dict = {"image": self.image}
        if self.views is not None:
            out["views"] = self.views
        if self.error is not None:
            out["error"] = self.error
            out["guesses"] = []
            return out
        out.update({
            "in_coverage": self.in_coverage,
            "coverage_score": None if self.coverage_score is None else round(self.coverage_score, 6),
            "confidence": self.confidence,
            "levels": self.levels,
            "guesses": [g.to_dict() for g in self.guesses],
        })
        if self.warnings:
            out["warnings"] = self.warnings
        return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (zero rows stay zero)."""
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


@dataclass(frozen=True)
class Calibration:
    """P(top guess within d km) = sigmoid(a · logit(mass within d km of the top guess) + b), per d."""

    coefficients: dict[str, tuple[float, float]]

    def to_dict(self) -> dict:
        return {d: list(ab) for d, ab in self.coefficients.items()}

    @classmethod
    def from_dict(cls, data: dict | None) -> Calibration | None:
        return cls({str(d): (float(ab[0]), float(ab[1])) for d, ab in data.items()}) if data else None

    def __call__(self, mass: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Calibrated probabilities, never smaller for a wider circle (each fit is its own, so enforce it)."""
        order = sorted(self.coefficients, key=float)
        raw = np.stack([_sigmoid(self.coefficients[d][0] * _logit(mass[d]) + self.coefficients[d][1])
                        for d in order])
        return dict(zip(order, np.maximum.accumulate(raw, axis=0), strict=True))


def best_guesses(probabilities: np.ndarray, label_lat: np.ndarray, label_lon: np.ndarray) -> np.ndarray:
    """The label each row answers with first: where by expected GeoScore, there by probability.

    Where: the Bayes choice for GeoScore, the label with the highest expected GeoScore under the row's
    probabilities (among its :data:`BEST_CANDIDATES` most probable). Every label's probability counts,
    weighted by how near it is, so a country holding most of the mass wins over a lone, slightly more
    probable label on another continent. There: the most probable label within :data:`BEST_LOCAL_KM` of
    it; at city scale GeoScore's expectation would pick the middle of the probable places (their
    geometric median), which moves fine labels such as a GPS gallery's points off the likeliest street.
    """
    p = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
    m = min(BEST_CANDIDATES, p.shape[1])
    candidates = np.argpartition(-p, m - 1, axis=1)[:, :m]
    where = to_unit_vectors(label_lat, label_lon).astype(np.float32)  # distances from dot products
    weights = p.astype(np.float32)
    best = np.empty(len(p), dtype=np.int64)
    rows = max(1, 2**21 // (m * p.shape[1]))  # bounded memory for many labels
    for start in range(0, len(p), rows):
        c = candidates[start : start + rows]
        cosine = np.clip(where[c] @ where.T, -1.0, 1.0)
        points = np.exp(np.arccos(cosine) * np.float32(-EARTH_RADIUS_KM / GEOSCORE_SCALE_KM))  # GeoScore / 5000
        expected = np.einsum("rcl,rl->rc", points, weights[start : start + rows])
        best[start : start + rows] = np.take_along_axis(c, expected.argmax(axis=1)[:, None], axis=1)[:, 0]
    near = where[best] @ where.T >= np.cos(BEST_LOCAL_KM / EARTH_RADIUS_KM)
    return np.where(near, p, -1.0).argmax(axis=1)


def mass_near_top(probabilities: np.ndarray, label_lat: np.ndarray, label_lon: np.ndarray,
                  distances_km=CONFIDENCE_KM, top: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Probability the model puts within each distance of its top guess (one row per image; ``top``: the
    rows' :func:`best_guesses`, when the caller has them)."""
    top = best_guesses(probabilities, label_lat, label_lon) if top is None else top
    d = haversine_km(label_lat[top][:, None], label_lon[top][:, None], label_lat[None], label_lon[None])
    return {str(km): (probabilities * (d <= km)).sum(axis=1) for km in distances_km}


def fit_calibration(probabilities: np.ndarray, true_lat: np.ndarray, true_lon: np.ndarray,
                    label_lat: np.ndarray, label_lon: np.ndarray) -> Calibration:
    """Fit :class:`Calibration` on held-out rows (their probabilities and true coordinates)."""
    from sklearn.linear_model import LogisticRegression

    top = best_guesses(probabilities, label_lat, label_lon)
    error = haversine_km(true_lat, true_lon, label_lat[top], label_lon[top])
    coefficients = {}
    for d, mass in mass_near_top(probabilities, label_lat, label_lon, top=top).items():
        hit = error <= float(d)
        if hit.all() or not hit.any():  # nothing to learn: say what was seen
            rate = float(hit.mean())
            coefficients[d] = (0.0, float(_logit(np.array([rate]))[0]))
            continue
        model = LogisticRegression(C=10.0).fit(_logit(mass)[:, None], hit)
        coefficients[d] = (float(model.coef_[0, 0]), float(model.intercept_[0]))
    return Calibration(coefficients)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Answerer:
    """Turns probability rows over a model's labels into :class:`Prediction` objects."""

    def __init__(self, labels: pd.DataFrame, coverage: Coverage | None = None,
                 calibration: Calibration | None = None, merge_km: float = 0.0) -> None:
        """``merge_km`` > 0: a guess closer than this to a more probable one joins it (a GPS head's gallery
        points lie a few km apart: the top guesses should be different places)."""
        self.labels = labels
        self.merge_km = merge_km
        self.coverage = coverage
        self.calibration = calibration
        self.lat = labels["lat"].to_numpy(dtype=np.float64)
        self.lon = labels["lon"].to_numpy(dtype=np.float64)
        names = labels["name"].astype(str)
        self.place = _column(labels, "place", names)
        self.region = _column(labels, "region", "")
        self.country = _column(labels, "country", "")
        known_region = self.region != ""
        region_names = np.where(known_region, self.region + ", " + self.country, "")
        self.groups = {"country": self.country, "region": region_names}
        self.names = names.to_numpy()
        self._membership = {level: _membership(*pd.factorize(values)) for level, values in self.groups.items()}
        texts = (map(str, column) for column in (self.names, self.place, self.region, self.country))
        self._guess_fields = list(zip(self.lat.tolist(), self.lon.tolist(), *texts, strict=True))
        """Each label's :class:`Guess` fields but its probability, as plain Python values (built once)."""

    def answer(self, image: str, probabilities: np.ndarray, *, top_k: int = 5, level: str = "place",
               coverage_score: float | None = None, views: list[str] | None = None,
               warnings: list[str] | None = None) -> Prediction:
        """The prediction for one probability row (labels in order)."""
        prediction = self.answer_rows([image], np.asarray(probabilities)[None], top_k=top_k, level=level,
                                      coverage_scores=[coverage_score])[0]
        prediction.views = views
        if prediction.error is None:
            prediction.warnings = list(warnings or [])
        return prediction

    def answer_rows(self, images: Sequence[str], probabilities: np.ndarray, *, top_k: int = 5, level: str = "place",
                    coverage_scores: Sequence[float | None] | np.ndarray | None = None) -> list[Prediction]:
        """The predictions for a matrix of probability rows, one per image (the best guesses and the
        confidence computed for all rows at once)."""
        if level not in LEVELS:
            raise GeoscopeError(f"level must be one of {', '.join(LEVELS)} (got {level!r})")
        if top_k < 1:
            raise GeoscopeError(f"top_k must be at least 1 (got {top_k})")
        if level != "place" and not (self.groups[level] != "").any():
            raise GeoscopeError(f"this model's labels have no {level} names (a bundle from an older geoscope): "
                                "answer by place, or retrain it")
        p = np.asarray(probabilities, dtype=np.float64)  # (images, labels)
        finite = np.isfinite(p).all(axis=1)
        first = np.zeros(len(p), dtype=np.int64)
        first[finite] = self.best(p[finite])
        confidence: list[dict | None] = [None] * len(p)
        calibrated = self.confidence(p[finite], first[finite]) if finite.any() else None
        if calibrated is not None:
            for j, i in enumerate(np.flatnonzero(finite)):
                confidence[i] = {d: round(float(v[j]), 4) for d, v in calibrated.items()}
        scores = [None] * len(p) if coverage_scores is None else list(coverage_scores)
        rows = np.flatnonzero(finite)
        ranked = {name: self._rank(p[rows], name, max(LEVEL_ROWS, top_k))
                  for name, (_, group_names) in self._membership.items() if group_names}
        guesses = (self._place_guesses(p[rows], first[rows], top_k) if level == "place"
                   else [self._level_guesses(p[i], level, ranked[level][j][:top_k]) for j, i in enumerate(rows)])
        levels = [{name: entries[j][:LEVEL_ROWS] for name, entries in ranked.items()} for j in range(len(rows))]
        answered = iter([self._prediction(images[i], levels[j], guesses[j], confidence[i], scores[i])
                         for j, i in enumerate(rows)])
        return [next(answered) if ok else Prediction(image, [], "the model produced no finite probabilities")
                for image, ok in zip(images, finite, strict=True)]

    def _prediction(self, image: str, levels: dict[str, list[dict]], guesses: list[Guess], confidence: dict | None,
                    coverage_score: float | None) -> Prediction:
        if coverage_score is not None and not math.isfinite(coverage_score):
            coverage_score = None  # unknown: a model without training images to compare with
        in_coverage = None
        if self.coverage is not None and coverage_score is not None:
            in_coverage = bool(coverage_score >= self.coverage.threshold)
        return Prediction(image, guesses, in_coverage=in_coverage, coverage_score=float(coverage_score)
                          if coverage_score is not None else None, confidence=confidence, levels=levels)

    def _rank(self, p: np.ndarray, level: str, limit: int) -> list[list[dict]]:
        """For each probability row, the ``limit`` most probable countries (or regions), their probabilities
        summed (unnamed ones left out)."""
        membership, names = self._membership[level]
        sums = p @ membership
        order = np.argsort(-sums, axis=1, kind="stable")[:, :limit]
        top = np.take_along_axis(sums, order, axis=1).round(6).tolist()
        return [[{"name": names[g], "probability": s} for g, s in zip(groups, row, strict=True)]
                for groups, row in zip(order.tolist(), top, strict=True)]

    def confidence(self, probabilities: np.ndarray, best: np.ndarray) -> dict[str, np.ndarray] | None:
        """Calibrated probability, per row, that its first guess (``best``) is within 25, 200 and 750 km;
        ``None`` for a model without calibration."""
        if self.calibration is None:
            return None
        return self.calibration(mass_near_top(probabilities, self.lat, self.lon, top=best))

    def best(self, probabilities: np.ndarray) -> np.ndarray:
        """The label each probability row answers with first (:func:`best_guesses`)."""
        return best_guesses(probabilities, self.lat, self.lon)

    def _place_guesses(self, p: np.ndarray, first: np.ndarray, top_k: int) -> list[list[Guess]]:
        """For each probability row, its best guess (``first``), then the other labels by probability."""
        order = np.argsort(-p, axis=1, kind="stable")
        if self.merge_km <= 0:  # without merging, the first top_k + 1 hold every guess but the best one
            order = order[:, :top_k + 1]
        out = []
        for row, best, ranked in zip(p, first.tolist(), order.tolist(), strict=True):
            ranked = [best, *(i for i in ranked if i != best)]
            kept, mass = (self._merged(ranked, row, top_k) if self.merge_km > 0
                          else (ranked[:top_k], row[ranked[:top_k]].tolist()))
            out.append([self._guess(i, m) for i, m in zip(kept, mass, strict=True)])
        return out

    def _guess(self, label: int, probability: float) -> Guess:
        lat, lon, name, place, region, country = self._guess_fields[label]
        return Guess(lat, lon, name, probability, place, region, country)

    def _merged(self, order: list[int], p: np.ndarray, top_k: int) -> tuple[list[int], list[float]]:
        """The first ``top_k`` labels of ``order`` at least :attr:`merge_km` apart, each with the probability
        of the labels met on the way that lie within that distance of it (the first kept, then the most probable)."""
        kept: list[int] = []
        mass: list[float] = []
        for i in order:
            if kept:
                d = haversine_km(self.lat[i], self.lon[i], self.lat[kept], self.lon[kept])
                near = int(np.argmin(d))
                if d[near] <= self.merge_km:
                    mass[near] += float(p[i])
                    continue
            if len(kept) == top_k:
                break
            kept.append(int(i))
            mass.append(float(p[i]))
        # what joined a guess can lift it above another; the best guess stays first
        ranked = [0, *sorted(range(1, len(kept)), key=lambda j: -mass[j])]
        return [kept[j] for j in ranked], [mass[j] for j in ranked]

    def _level_guesses(self, p: np.ndarray, level: str, ranked: list[dict]) -> list[Guess]:
        """One guess per country (or region) ``ranked`` (:meth:`_rank`): its summed probability, at its most
        probable label."""
        values = self.groups[level]
        out = []
        for entry in ranked:
            members = np.flatnonzero(values == entry["name"])
            best = members[np.argmax(p[members])]
            region = str(self.region[best]) if level == "region" else ""
            out.append(Guess(float(self.lat[best]), float(self.lon[best]), entry["name"], entry["probability"],
                             "", region, str(self.country[best])))
        return out




def _membership(codes: np.ndarray, names: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Which named group each label belongs to, as a ``(labels, named groups)`` matrix of 0 and 1, and the
    groups' names (unnamed ones, ``""``, left out): probability rows times it are the groups' sums."""
    named = np.flatnonzero(names != "")
    return (codes[:, None] == named[None]).astype(np.float64), [str(n) for n in names[named]]


def _column(labels: pd.DataFrame, name: str, default) -> np.ndarray:
    if name not in labels:
        return np.asarray(default if isinstance(default, pd.Series) else [default] * len(labels), dtype=object)
    return labels[name].fillna("").astype(str).to_numpy(dtype=object)
