"""What a person reads: the best single answer, guesses ranked by probability, the hierarchy, coverage
and confidence.

Decided once here; the table, JSON, CSV/GeoJSON outputs, the report and the web page all render a
:class:`Prediction`. A model's probabilities over its labels become:

- ``answer`` (:class:`Answer`): the best single answer (:func:`best_guesses`: where by expected GeoScore,
  there by probability), at the point its refiner moves it to, named after that point, with the
  probability of that name, the expected GeoScore there, the calibrated probability that it is within
  25, 200 and 750 km, and its path down the hierarchy (country → region → place, each with its
  probability);
- ``guesses`` (:class:`Guess`), ranked by probability alone, each named after where it points (the
  label it came from is a secondary field); guesses whose names coincide are one guess, their
  probabilities summed, so no name appears twice (at ``region`` and ``country`` level the guesses are
  the regions or countries, their labels' probabilities summed);
- ``levels``: the probability of each country and region, and whether the photo is within what the
  model knows (``in_coverage``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from typing_extensions import TypedDict

from ..errors import GeoscopeError
from ..geo.sphere import EARTH_RADIUS_KM, GEOSCORE_SCALE_KM, haversine_km, to_unit_vectors
from .coverage import Coverage

if TYPE_CHECKING:
    from .refine import Refined

LEVELS = ("place", "region", "country")
CONFIDENCE_KM = (25, 200, 750)
LEVEL_ROWS = 5
"""Entries listed per level of the hierarchy."""
BEST_CANDIDATES = 32
"""The most probable labels among which :func:`best_guesses` chooses where."""
BEST_LOCAL_KM = 50.0
"""…and then the most probable label within this distance of that choice."""
NAMED_CANDIDATES = 24
"""Labels named (and refined) per answer, at least: the best single answer, then the most probable. Guesses
whose names coincide merge, so more labels than ``top_k`` are named; a fixed number keeps the answer's
probability the same whatever ``top_k`` (3 × ``top_k`` when that is more)."""


class Share(TypedDict):
    """A country or region (``"England, United Kingdom"``) and the probability summed over its labels."""

    name: str
    probability: float


class Step(TypedDict):
    """One step of the answer's path down the hierarchy: its level, its name, and its probability (the
    labels' summed; ``None`` where the model has no label there)."""

    level: str
    name: str
    probability: float | None


@dataclass(frozen=True)
class Guess:
    """One ranked guess: where, named after where it points (``name``: place, region, country), how likely;
    ``label`` is the model's label it came from (its refiner may have moved it off the label's own place)."""

    lat: float
    lon: float
    label: str
    probability: float
    place: str = ""
    region: str = ""
    country: str = ""
    name: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "lat": round(self.lat, 6), "lon": round(self.lon, 6), "place": self.place,
                "region": self.region, "country": self.country, "probability": round(self.probability, 6),
                "label": self.label}


@dataclass(frozen=True)
class Answer:
    """The best single answer: the point to bet on, apart from the guesses' ranking by probability.

    ``probability`` is that of the guess named like it (its labels summed); ``expected_geoscore`` the
    GeoScore (0–5,000) the model expects there under its own probabilities; ``confidence`` the calibrated
    probability that it lies within 25, 200 and 750 km; ``hierarchy`` its path, country → region → place.
    """

    lat: float
    lon: float
    name: str
    place: str
    region: str
    country: str
    label: str
    probability: float
    expected_geoscore: float | None = None
    confidence: dict[str, float] | None = None
    hierarchy: list[Step] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"name": self.name, "lat": round(self.lat, 6), "lon": round(self.lon, 6), "place": self.place,
                "region": self.region, "country": self.country, "probability": round(self.probability, 6),
                "expected_geoscore": None if self.expected_geoscore is None else round(self.expected_geoscore, 1),
                "confidence": self.confidence, "label": self.label,
                "hierarchy": [{**step, "probability": None if step["probability"] is None
                               else round(step["probability"], 6)} for step in self.hierarchy]}


@dataclass(frozen=True)
class Evidence:
    """A training place the photo looks like: where it is, the label it belongs to, how alike (cosine similarity of
    their features in the kNN gallery's space, 1 the same), how far it lies from the answer, which row of the
    gallery its photo is and where that photo is."""

    lat: float
    lon: float
    label: str
    similarity: float
    km_from_answer: float
    gallery_row: int = -1
    """The photo's row in the model's kNN gallery (−1: unknown)."""
    image: str | None = None
    """The photo's absolute path on this machine, where the bundle recorded it and the file is here (None
    otherwise); the API gives the address of its thumbnail instead (``gallery/<row>.jpg``)."""

    def to_dict(self) -> dict:
        return {"lat": round(self.lat, 6), "lon": round(self.lon, 6), "label": self.label,
                "similarity": round(self.similarity, 4), "km_from_answer": round(self.km_from_answer, 1),
                "gallery_row": self.gallery_row, "image": self.image}


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
    """The calibrated probability that :attr:`answer` lies within 25, 200 and 750 km (as ``answer.confidence``)."""
    levels: dict[str, list[Share]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    answer: Answer | None = None
    evidence: list[Evidence] | None = None
    """With ``evidence=K``: the K training places most like the photo, most alike first."""
    coverage_reason: str | None = None
    """Why the photo is out of coverage (``in_coverage`` false): which test flagged it, said for a person."""

    def to_dict(self) -> dict:
        out: dict = {"image": self.image}
        if self.error is not None:
            out.update({"error": self.error, "answer": None, "guesses": []})
        else:
            out.update({
                "answer": None if self.answer is None else self.answer.to_dict(),
                "guesses": [g.to_dict() for g in self.guesses],
                "levels": self.levels,
                "in_coverage": self.in_coverage,
                "coverage_score": None if self.coverage_score is None else round(self.coverage_score, 6),
                "confidence": self.confidence,
            })
            if self.coverage_reason is not None:
                out["coverage_reason"] = self.coverage_reason
            if self.evidence is not None:
                out["evidence"] = [e.to_dict() for e in self.evidence]
            if self.warnings:
                out["warnings"] = self.warnings
        if self.views is not None:
            out["views"] = self.views
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


Refine = Callable[[np.ndarray, np.ndarray], "Refined"]
"""Where a refiner moves labels: ``(rows, labels)`` → :class:`~geoscope.answer.refine.Refined`, ``rows`` being
positions in the probability matrix (one place each) and ``labels`` ``(len(rows), m)`` the labels to move."""


class Answerer:
    """Turns probability rows over a model's labels into :class:`Prediction` objects."""

    def __init__(self, labels: pd.DataFrame, coverage: Coverage | None = None,
                 calibration: Calibration | None = None, merge_km: float = 0.0) -> None:
        """``merge_km`` > 0: a label closer than this to a more probable one joins its guess (a GPS head's
        gallery points lie a few km apart: the guesses should be different places)."""
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
        factorized = {level: pd.factorize(values) for level, values in self.groups.items()}
        self._membership = {level: _membership(*codes) for level, codes in factorized.items()}
        self._group_column = {level: {name: j for j, name in enumerate(names)}
                              for level, (_, names) in self._membership.items()}
        self._group_of = {level: _named_columns(*codes) for level, codes in factorized.items()}
        """Each label's column among its level's named groups (−1: unnamed at that level)."""
        keys = {"country": self.country, "region": self.region + ", " + self.country}
        self._moved_from = {level: np.array([self._group_column[level].get(k, -1) for k in key], dtype=np.int64)
                            for level, key in keys.items()}
        """The column a label's probability counts under at each level when its refined point lies elsewhere."""
        self._texts = np.stack([np.asarray(c, dtype=object) for c in (self.place, self.region, self.country,
                                                                      self.names)], axis=1)
        """Each label's place, region, country and name (a ``(labels, 4)`` object array of ``str``)."""
        self._unit = to_unit_vectors(self.lat, self.lon).astype(np.float32)

    def check(self, top_k: int, level: str) -> None:
        """One clear error for a level or ``top_k`` this model cannot answer with."""
        if level not in LEVELS:
            raise GeoscopeError(f"level must be one of {', '.join(LEVELS)} (got {level!r})")
        if top_k < 1:
            raise GeoscopeError(f"top_k must be at least 1 (got {top_k})")
        if level != "place" and not (self.groups[level] != "").any():
            raise GeoscopeError(f"this model's labels have no {level} names (a bundle from an older geoscope): "
                                "answer by place, or retrain it")

    def answer(self, image: str, probabilities: np.ndarray, *, top_k: int = 5, level: str = "place",
               coverage_score: float | None = None, views: list[str] | None = None,
               warnings: list[str] | None = None) -> Prediction:
        """The prediction for one probability row (labels in order), unrefined."""
        prediction = self.answer_rows([image], np.asarray(probabilities)[None], top_k=top_k, level=level,
                                      coverage_scores=[coverage_score])[0]
        prediction.views = views
        if prediction.error is None:
            prediction.warnings += list(warnings or [])
        return prediction

    def answer_rows(self, images: Sequence[str], probabilities: np.ndarray, *, top_k: int = 5, level: str = "place",
                    coverage_scores: Sequence[float | None] | np.ndarray | None = None,
                    coverage_reasons: Sequence[str | None] | None = None,
                    refine: Refine | None = None) -> list[Prediction]:
        """The predictions for a matrix of probability rows, one per image or place, all rows at once: the best
        single answer, the labels to name (it first, then by probability) moved by ``refine`` (at the place
        level), the guesses named after where they point and merged by name, the hierarchy, coverage and the
        calibrated confidence."""
        self.check(top_k, level)
        p = np.asarray(probabilities, dtype=np.float64)  # (images, labels)
        finite = np.isfinite(p).all(axis=1)
        rows = np.flatnonzero(finite)
        q = p[rows]
        best = self.best(q) if len(rows) else np.zeros(0, dtype=np.int64)
        given = np.full(len(p), np.nan) if coverage_scores is None else \
            np.array([np.nan if s is None else float(s) for s in coverage_scores], dtype=np.float64)
        calibrated = self.confidence(q, best, given[rows]) if len(rows) else None
        sums = {name: q @ membership for name, (membership, group_names) in self._membership.items() if group_names}
        labels, masses, counts = self._candidates(q, best, top_k)
        moved = refine(rows, labels) if refine is not None and len(rows) else None
        if moved is not None and moved.names is not None:  # at every level, so that its sums are the same
            self._follow_moves(sums, labels, masses, counts, moved.names)
        ranked = {name: self._rank(s, name, max(LEVEL_ROWS, top_k)) for name, s in sums.items()}
        if level == "place":
            named = self._place_answers(labels, masses, counts, moved, top_k)
        else:
            named = self._level_answers(q, best, level, ranked[level], sums[level], top_k)
        expected = self.expected_geoscore(q, np.array([a[0] for a, _ in named]), np.array([a[1] for a, _ in named]))
        confidences = [None] * len(rows) if calibrated is None else \
            [dict(zip(calibrated, values, strict=True)) for values in
             zip(*([round(v, 4) for v in c.tolist()] for c in calibrated.values()), strict=True)]
        answered = {}
        for j, i in enumerate(rows.tolist()):
            fields, guesses = named[j]
            answer = Answer(*fields, float(expected[j]), confidences[j],
                            self._hierarchy(fields, {name: s[j] for name, s in sums.items()}, level))
            levels = {name: entries[j][:LEVEL_ROWS] for name, entries in ranked.items()}
            answered[i] = self._prediction(images[i], answer, guesses, levels, float(given[i]),
                                           None if coverage_reasons is None else coverage_reasons[i])
        return [answered[i] if ok else Prediction(image, [], "the model produced no finite probabilities")
                for i, (image, ok) in enumerate(zip(images, finite, strict=True))]

    def _prediction(self, image: str, answer: Answer, guesses: list[Guess], levels: dict[str, list[Share]],
                    coverage_score: float | None, reason: str | None = None) -> Prediction:
        if coverage_score is not None and not math.isfinite(coverage_score):
            coverage_score = None  # unknown: a model without training images to compare with
        in_coverage = None if self.coverage is None else self.coverage.says(coverage_score)
        warnings = []
        if self.coverage is not None and coverage_score is not None and self.coverage.too_few:
            warnings.append(f"this model saw {self.coverage.items} validation images: too few to tell whether "
                            "a photo is like its training images")
        return Prediction(image, guesses, in_coverage=in_coverage, coverage_score=float(coverage_score)
                          if coverage_score is not None else None,
                          confidence=answer.confidence, levels=levels, answer=answer, warnings=warnings,
                          coverage_reason=reason if in_coverage is False else None)

    def _follow_moves(self, sums: dict[str, np.ndarray], labels: np.ndarray, masses: np.ndarray, counts: np.ndarray,
                      names: np.ndarray) -> None:
        """The summed probabilities per country and region moved with the refined labels: a label whose point lies
        in another (known) region or country counts there, as it is named, so that a place's probability never
        exceeds its region's (all rows at once; each move applied in the order the labels are named)."""
        named = (np.arange(labels.shape[1])[None] < counts[:, None]).ravel()
        where, points = pd.factorize(names.ravel()[named])  # each distinct named point once (−1: none)
        rows = np.repeat(np.arange(len(labels)), labels.shape[1])[named]
        moves = where >= 0
        keys = {"country": lambda region, country: country, "region": lambda region, country: f"{region}, {country}"}
        for level, key in keys.items():
            if level not in sums:
                continue
            columns = self._group_column[level]
            to = np.array([columns.get(key(str(p[1]), str(p[2])), -1) for p in points], dtype=np.int64)
            old = self._moved_from[level][labels.ravel()[named]]
            new = np.full(len(where), -1, dtype=np.int64)
            new[moves] = to[where[moves]]
            step = moves & (old >= 0) & (new >= 0) & (old != new)
            r, mass = rows[step], masses.ravel()[named][step]
            # each move as the pair (−mass at its old column, +mass at its new), in order: the same sums as one by one
            np.add.at(sums[level], (np.stack([r, r], axis=1).ravel(), np.stack([old[step], new[step]], axis=1).ravel()),
                      np.stack([-mass, mass], axis=1).ravel())

    def _rank(self, sums: np.ndarray, level: str, limit: int) -> list[list[Share]]:
        """For each row of summed probabilities per country (or region), the ``limit`` most probable (unnamed
        ones left out)."""
        names = self._membership[level][1]
        order = np.argsort(-sums, axis=1, kind="stable")[:, :limit]
        top = np.take_along_axis(sums, order, axis=1).round(6).tolist()
        return [[{"name": names[g], "probability": s} for g, s in zip(groups, row, strict=True)]
                for groups, row in zip(order.tolist(), top, strict=True)]

    def confidence(self, probabilities: np.ndarray, best: np.ndarray,
                   coverage_scores: np.ndarray | None = None) -> dict[str, np.ndarray] | None:
        """Calibrated probability, per row, that its best single answer (``best``) is within 25, 200 and
        750 km; ``None`` for a model without calibration.

        No surer than the validation images can show: a model whose coverage records how many validation items
        it saw (``n``) bounds each row by ``1 / (m + 2)`` from either end, ``m`` the items as unusual as the
        photo (``n`` times its coverage score, which is that share), so a photo the coverage test barely keeps
        is never near-certain."""
        if self.calibration is None:
            return None
        calibrated = self.calibration(mass_near_top(probabilities, self.lat, self.lon, top=best))
        items = None if self.coverage is None else self.coverage.items
        if items is None:
            return calibrated
        share = np.ones(len(best)) if coverage_scores is None else np.nan_to_num(coverage_scores, nan=1.0)
        bound = 1.0 / (items * np.clip(share, 1.0 / items, 1.0) + 2.0)
        return {d: np.clip(v, bound, 1.0 - bound) for d, v in calibrated.items()}

    def best(self, probabilities: np.ndarray) -> np.ndarray:
        """The label each probability row answers with (:func:`best_guesses`)."""
        return best_guesses(probabilities, self.lat, self.lon)

    def expected_geoscore(self, probabilities: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """The GeoScore (0–5,000) each row's probabilities expect at the point ``lat``, ``lon`` of that row."""
        out = np.zeros(len(probabilities))
        if not len(out):
            return out
        points = to_unit_vectors(lat, lon).astype(np.float32)
        step = max(1, 2**22 // max(1, len(self.lat)))
        for start in range(0, len(out), step):
            cosine = np.clip(points[start:start + step] @ self._unit.T, -1.0, 1.0)
            score = np.exp(np.arccos(cosine) * np.float32(-EARTH_RADIUS_KM / GEOSCORE_SCALE_KM))
            out[start:start + step] = 5000.0 * (score * probabilities[start:start + step]).sum(axis=1)
        return out

    def _candidates(self, p: np.ndarray, best: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The labels each row names, ``(rows, m)``: its best answer, then the others by probability (with
        :attr:`merge_km`, only the first label of each cluster, its probability holding the cluster's); their
        probabilities; and how many each row has (the rest repeat the best answer, with no probability)."""
        width = min(p.shape[1], max(NAMED_CANDIDATES, 3 * top_k))
        if self.merge_km <= 0:
            if width < p.shape[1]:
                top = np.argpartition(-p, width, axis=1)[:, :width + 1]
                order = np.take_along_axis(top, np.argsort(-np.take_along_axis(p, top, axis=1), axis=1, kind="stable"),
                                           axis=1)
            else:
                order = np.argsort(-p, axis=1, kind="stable")
            others = np.argsort(order == best[:, None], axis=1, kind="stable")[:, :width - 1]  # the best left out
            labels = np.concatenate([best[:, None], np.take_along_axis(order, others, axis=1)], axis=1)
            return labels, np.take_along_axis(p, labels, axis=1), np.full(len(p), width, dtype=np.int64)
        order = np.argsort(-p, axis=1, kind="stable")
        others = np.argsort(order == best[:, None], axis=1, kind="stable")[:, :-1]
        return self._merged(np.concatenate([best[:, None], np.take_along_axis(order, others, axis=1)], axis=1), p,
                            width)

    def _merged(self, order: np.ndarray, p: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each row, the first ``limit`` labels of ``order`` at least :attr:`merge_km` apart, each with the
        probability of the labels met on the way that lie within that distance of it (all rows together, a label
        of each at a time; the rest of a row repeat its first label, with no probability); and how many each has."""
        n = len(order)
        labels = np.repeat(order[:, :1], limit, axis=1)
        masses = np.zeros(labels.shape)
        counts = np.zeros(n, dtype=np.int64)
        done = np.zeros(n, dtype=bool)
        every = np.arange(n)
        for i in order.T:
            if done.all():
                break
            d = haversine_km(self.lat[i][:, None], self.lon[i][:, None], self.lat[labels], self.lon[labels])
            d[np.arange(limit)[None] >= counts[:, None]] = np.inf
            near = d.argmin(axis=1)
            merge = ~done & (d[every, near] <= self.merge_km)
            masses[merge, near[merge]] += p[merge, i[merge]]
            done |= ~merge & (counts == limit)
            add = ~done & ~merge
            labels[add, counts[add]] = i[add]
            masses[add, counts[add]] = p[add, i[add]]
            counts += add
        return labels, masses, counts

    def _place_answers(self, labels: np.ndarray, masses: np.ndarray, counts: np.ndarray, moved: Refined | None,
                       top_k: int) -> list[tuple[tuple, list[Guess]]]:
        """Each row's answer (the first eight fields of :class:`Answer`) and guesses from the labels it names (its
        best answer first), all rows at once: each named after where it points (a refined point's name, else its
        label's); labels whose names or points coincide are one guess, at the point of the first (the more probable),
        their probabilities summed; the guesses by probability."""
        from ..geo.naming import display_name  # here: the gazetteer's modules load only when answering

        n, m = labels.shape
        cell = (np.arange(m)[None] < counts[:, None]).ravel()  # the cells named, row by row
        row = np.repeat(np.arange(n), m)[cell]
        label = labels.ravel()[cell]
        mass = masses.ravel()[cell]
        texts, source = self._texts, label  # place, region, country and name of each cell: its label's…
        if moved is None:
            lat, lon = self.lat[label], self.lon[label]
        else:
            lat, lon = (np.asarray(c, dtype=np.float64).ravel()[cell] for c in (moved.lat, moved.lon))
            if moved.names is not None:  # …or its named point's (each distinct point named once)
                where, points = pd.factorize(moved.names.ravel()[cell])
                said = [(*(str(v) for v in point), display_name(*(str(v) for v in point))) for point in points]
                texts = np.concatenate([texts, np.array(said, dtype=object).reshape(-1, 4)])
                source = np.where(where >= 0, len(self._texts) + where, label)
        name = pd.factorize(texts[:, 3])[0][source]
        # a point already named: a guess moved there is read under that name (the first cell's at that point)
        point = _codes(row, *(_rounded(c) for c in (lat, lon)))
        name = name[_first(point)]
        group = _codes(row, name)
        first = _first(group)  # each guess's fields are those of its first cell
        total = np.bincount(group, weights=mass)[group]  # in the order named: as one sum after another
        heads = np.flatnonzero(first == np.arange(len(first)))
        ranked = heads[np.lexsort((heads, -total[heads], row[heads]))]  # by probability; ties in the order named
        rank = np.arange(len(ranked)) - np.searchsorted(row[ranked], row[ranked])
        ranked = ranked[rank < top_k]
        named = [lat, lon, self.names[label], *(texts[source, c] for c in range(4)), total]

        def of(cells: np.ndarray) -> list[tuple]:  # lat, lon, label, place, region, country, name, probability
            return list(zip(*(np.asarray(f)[cells].tolist() for f in named), strict=True))

        guesses = [Guess(la, lo, label, p, place, region, country, said)
                   for la, lo, label, place, region, country, said, p in of(ranked)]
        ends = np.searchsorted(row[ranked], np.arange(1, n + 1)).tolist()
        answers = [(la, lo, said, place, region, country, label, p)  # each row's first cell: its best answer
                   for la, lo, label, place, region, country, said, p in of(np.searchsorted(row, np.arange(n)))]
        return list(zip(answers, (guesses[a:b] for a, b in zip([0, *ends], ends, strict=False)), strict=True))

    def _level_answers(self, p: np.ndarray, best: np.ndarray, level: str, ranked: list[list[Share]], sums: np.ndarray,
                       top_k: int) -> list[tuple[tuple, list[Guess]]]:
        """Each row's answer at ``level`` (the first eight fields of :class:`Answer`): the country (or region) of the
        best single answer, at that label; the guesses: one per country (or region) ``ranked`` (:meth:`_rank`), at its
        most probable label (the answer's at the answer's)."""
        column, names = self._group_of[level], self._membership[level][1]
        top = _group_argmax(p, column, len(names)).tolist()  # each row's most probable label of each group
        columns = self._group_column[level]
        lat, lon, region, country = self.lat.tolist(), self.lon.tolist(), self.region.tolist(), self.country.tolist()
        if level != "region":
            region = [""] * len(region)
        out = []
        for j, (b, entries) in enumerate(zip(best.tolist(), ranked, strict=True)):
            home = int(column[b])
            if home < 0:  # the best label has no name at this level: the most probable group answers
                home = columns[entries[0]["name"]]
                b = top[j][home]
            answer = (lat[b], lon[b], names[home], "", region[b], country[b], names[home], float(sums[j, home]))
            guesses = []
            for entry in entries[:top_k]:
                g = columns[entry["name"]]
                at = b if g == home else top[j][g]
                guesses.append(Guess(lat[at], lon[at], names[g], entry["probability"], "", region[at], country[at],
                                     names[g]))
            out.append((answer, guesses))
        return out

    def _hierarchy(self, answer: tuple, sums: dict[str, np.ndarray], level: str) -> list[Step]:
        """The answer's path (from its first eight fields, as :class:`Answer` takes them): its country and region,
        each with its labels' summed probability, then (at the place level) its place with the answer's probability."""
        _, _, name, place, region, country, _, probability = answer
        steps = []
        keys = {"country": country, "region": f"{region}, {country}"}
        for step, shown in (("country", country), ("region", region)):
            if not shown or (step == "region" and level == "country"):
                continue
            column = self._group_column.get(step, {}).get(keys[step])
            steps.append(Step(level=step, name=shown,
                              probability=None if column is None else float(sums[step][column])))
        if level == "place":
            steps.append(Step(level="place", name=place or name, probability=probability))
        return steps


def _membership(codes: np.ndarray, names: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Which named group each label belongs to, as a ``(labels, named groups)`` matrix of 0 and 1, and the
    groups' names (unnamed ones, ``""``, left out): probability rows times it are the groups' sums."""
    named = np.flatnonzero(names != "")
    return (codes[:, None] == named[None]).astype(np.float64), [str(n) for n in names[named]]


def _column(labels: pd.DataFrame, name: str, default) -> np.ndarray:
    if name not in labels:
        return np.asarray(default if isinstance(default, pd.Series) else [default] * len(labels), dtype=object)
    return labels[name].fillna("").astype(str).to_numpy(dtype=object)


def _named_columns(codes: np.ndarray, names: np.ndarray) -> np.ndarray:
    """Each label's column among the named groups of :func:`_membership` (−1: its group is unnamed)."""
    column = np.full(len(names), -1, dtype=np.int64)
    named = np.flatnonzero(names != "")
    column[named] = np.arange(len(named))
    return column[codes]


def _group_argmax(p: np.ndarray, column: np.ndarray, groups: int) -> np.ndarray:
    """``(rows, groups)``: each row's most probable label among each group's (the first, in label order, of
    equals; labels in no group, ``column`` −1, left out)."""
    order = np.argsort(np.where(column >= 0, column, groups), kind="stable")[: int((column >= 0).sum())]
    starts = np.searchsorted(column[order], np.arange(groups))
    grouped = p[:, order]
    highest = np.maximum.reduceat(grouped, starts, axis=1)
    at = np.where(grouped == np.repeat(highest, np.diff(np.append(starts, len(order))), axis=1),
                  np.arange(len(order)), len(order))
    return order[np.minimum.reduceat(at, starts, axis=1)]


def _rounded(values: np.ndarray) -> np.ndarray:
    """Coordinates rounded to 6 decimals as Python rounds them (each distinct value once)."""
    distinct, inverse = np.unique(values, return_inverse=True)
    return np.array([round(v, 6) for v in distinct.tolist()], dtype=np.float64)[inverse.ravel()]


def _codes(row: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """One code per distinct ``(row, *keys)`` of the cells."""
    code = np.asarray(row, dtype=np.int64)
    for key in keys:
        distinct = np.unique(key, return_inverse=True)[1].ravel()
        code = np.unique(code * (int(distinct.max()) + 1) + distinct, return_inverse=True)[1].ravel()
    return code


def _first(codes: np.ndarray) -> np.ndarray:
    """For each cell, the first cell with its code."""
    first = np.full(int(codes.max()) + 1 if len(codes) else 0, len(codes), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(codes)))
    return first[codes]
