"""Check a claim: was this photo taken within ``km`` of a point?

The photo's evidence about a point comes from the model's probabilities over its labels, each label's
images spread over its area: a circular Gaussian around the label's point whose width comes from its
``spread_km`` (the median distance of its training images to that point). For a claim (a circle of
``km`` around a point):

- ``M``, the model's probability that the photo lies in the circle: every label's probability times the
  share of its area inside the circle; ``M0``, the same under the training prior (each label's share of
  the training images, ``count``);
- the **likelihood ratio**, posterior odds over prior odds, ``odds(M) / odds(M0)``: how much more (or
  less) likely the circle is after seeing the photo;
- the same split in two levels, so that a photo of the right country cannot pass for one of the right
  place: the **country** ratio (of the countries the circle reaches, as the labels name them) and the
  **place** ratio (of the circle among those countries' labels);
- the **calibrated probability** that the photo was taken inside the circle: a logistic fit on
  ``logit M`` and ``logit M0`` over validation photos, each paired with every validation place as a claim.

The verdict: ``inconsistent`` when the country ratio or the place ratio is at or below its threshold (the
photo points away from the claim at either level); ``consistent`` when the country ratio is at or above
its consistent threshold and the place ratio above its own (the photo supports the country, and nothing
in it points away from the place); else ``cannot tell``. Always ``cannot tell`` for a photo outside the
model's coverage, or for a circle that reaches no label's area (the model has never seen what is there).
Thresholds are chosen on validation claims (:meth:`ClaimCheck.fit`, :class:`Targets`): the inconsistent
ones below what almost every true claim reaches, the consistent one above what almost every claim in
another country reaches. They are fitted at several radii (:data:`RADII_KM`) and interpolated in log km.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

from ..errors import GeoscopeError, ModelError
from ..geo.sphere import pairwise_haversine_km

VERDICTS = ("consistent", "inconsistent", "cannot tell")
METHOD = "label-areas"
"""How the stored section measures the evidence (a bundle with another is refused)."""
RADII_KM = (1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
"""Circles the check is fitted for; between them its parameters are interpolated in log km."""
DEFAULT_KM = 25.0
MAX_KM = 20_000.0
"""Half the Earth's circumference, about: a larger circle holds the whole Earth."""
MEDIAN_PER_SIGMA = math.sqrt(2 * math.log(2))
"""Median distance of a circular Gaussian's points to its centre, in units of its σ."""
MIN_SPREAD_KM = 1.0
"""A label whose images lie closer together than this is spread over this much (one image: 0 km)."""
REACH_SIGMAS = 3.0
"""A label's area reaches this many σ from its point (99 % of a circular Gaussian lies within 3.03 σ)."""
COUNTRY_SHARE = 1e-3
"""A circle reaches a country when it holds at least this share of the circle's prior mass."""
FLOOR = 1e-6
"""Probabilities are clipped to [FLOOR, 1 − FLOOR] before taking odds (as the answer's confidence is); readable
output shows ratios beyond :data:`SHOWN_LIMIT` as beyond it, since the model is not calibrated that far."""
SHOWN_LIMIT = 1e4
SUPPORT = 2.0
"""The least ratio that counts as support: an inconsistent threshold is never above 1/SUPPORT, the country's consistent
threshold never below SUPPORT (and a place ratio from SUPPORT up is said to favour the point)."""
FAR_KM = 200.0
"""False claims "far in the same country" are at least this far from the photo, and at least twice the claim's
radius (:func:`far_km`; measured, never fitted)."""


@dataclass(frozen=True)
class Targets:
    """What the thresholds aim for on validation claims (photos in coverage)."""

    true_inconsistent: float = 0.004
    """Share of true claims each level may call inconsistent: its inconsistent threshold is that quantile of the
    true claims' ratios (two levels: at most twice this in all)."""
    other_country_consistent: float = 0.01
    """Share of false claims in another country whose country ratio may reach the consistent threshold (each other
    country weighing the same for every photo, :func:`claim_weights`)."""


@dataclass(frozen=True)
class Claim:
    """Where the photo is said to have been taken: within ``km`` of ``lat``, ``lon``."""

    lat: float
    lon: float
    km: float


@dataclass
class Verdict:
    """How a photo (or the views of one place) bears on a claim, or why it could not be checked.

    ``likelihood_ratio``: posterior odds over prior odds that the photo lies in the claim's circle;
    ``country_likelihood_ratio`` and ``place_likelihood_ratio`` its two levels (the countries the circle
    reaches, ``country``; the circle within them); ``probability``: the calibrated probability that the
    photo was taken in the circle; ``prior_probability``: the training prior's.
    """

    image: str
    claim: Claim
    verdict: str | None = None
    reason: str = ""
    likelihood_ratio: float | None = None
    probability: float | None = None
    prior_probability: float | None = None
    country: str | None = None
    country_likelihood_ratio: float | None = None
    place_likelihood_ratio: float | None = None
    in_coverage: bool | None = None
    coverage_score: float | None = None
    views: list[str] | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["claim"] = {"lat": self.claim.lat, "lon": self.claim.lon, "km": self.claim.km}
        for name in ("likelihood_ratio", "country_likelihood_ratio", "place_likelihood_ratio", "probability",
                     "prior_probability", "coverage_score"):
            out[name] = _significant(out[name])
        if out["views"] is None:
            del out["views"]
        if not out["warnings"]:
            del out["warnings"]
        return out


def check_claim(lat: float, lon: float, km: float) -> Claim:
    """The claim, or one clear error for a point or radius that is not one."""
    values = {"latitude": lat, "longitude": lon, "km": km}
    for name, value in values.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise GeoscopeError(f"the claim's {name} must be a finite number (got {value!r})")
    if not -90.0 <= lat <= 90.0:
        raise GeoscopeError(f"the claim's latitude must be in -90…90 (got {lat:g})")
    if not -180.0 <= lon <= 180.0:
        raise GeoscopeError(f"the claim's longitude must be in -180…180 (got {lon:g})")
    if not 0.0 < km <= MAX_KM:
        raise GeoscopeError(f"km must be more than 0 and at most {MAX_KM:,.0f} (got {km:g})")
    return Claim(float(lat), float(lon), float(km))


def parse_point(text: str) -> tuple[float, float]:
    """``"LAT,LON"`` in decimal degrees, or one clear error."""
    parts = str(text).replace(" ", "").split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        lat, lon = float(parts[0]), float(parts[1])
    except ValueError:
        raise GeoscopeError(f"--at takes LAT,LON in decimal degrees, such as 51.5072,-0.1276 (got {text!r})") \
            from None
    check_claim(lat, lon, DEFAULT_KM)
    return lat, lon


class LabelAreas:
    """Each label of a model as an area: a circular Gaussian around its point, with its share of the
    training images (the prior) and its country."""

    def __init__(self, labels: pd.DataFrame) -> None:
        missing = [c for c in ("lat", "lon", "count", "spread_km") if c not in labels]
        if missing:
            raise ModelError(f"labels.csv lacks {', '.join(missing)}: a claim needs each label's images")
        self.lat = labels["lat"].to_numpy(dtype=np.float64)
        self.lon = labels["lon"].to_numpy(dtype=np.float64)
        spread = np.nan_to_num(labels["spread_km"].to_numpy(dtype=np.float64), nan=MIN_SPREAD_KM)
        self.sigma = np.maximum(spread, MIN_SPREAD_KM) / MEDIAN_PER_SIGMA
        counts = labels["count"].to_numpy(dtype=np.float64).clip(0)
        if not counts.sum() > 0:
            raise ModelError("labels.csv counts no training image: a claim needs the training prior")
        self.prior = counts / counts.sum()
        names = labels["name"].astype(str).to_numpy() if "name" in labels else np.arange(len(labels)).astype(str)
        self.names = names
        country = labels["country"].fillna("").astype(str).to_numpy() if "country" in labels else \
            np.full(len(labels), "", dtype=object)
        self.countries, self.country_code = np.unique(country, return_inverse=True)
        self.membership = (self.country_code[:, None] == np.arange(len(self.countries))[None]).astype(np.float64)
        """``(labels, countries)``: 1 where the label lies in the country."""

    def within(self, lat: np.ndarray, lon: np.ndarray, km: float) -> np.ndarray:
        """``(points, labels)``: the share of each label's area within ``km`` of each point."""
        from scipy.stats import ncx2

        d = pairwise_haversine_km(np.atleast_1d(lat), np.atleast_1d(lon), self.lat, self.lon)
        sigma = np.broadcast_to(self.sigma[None], d.shape)
        out = (d <= km - 8 * sigma).astype(np.float64)
        middle = (np.abs(d - km) < 8 * sigma)
        out[middle] = ncx2.cdf((km / sigma[middle]) ** 2, 2, (d[middle] / sigma[middle]) ** 2)
        return out

    def nearest(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each point, the label whose area's edge (:data:`REACH_SIGMAS`) is nearest (inside several areas, the
        nearest label), and how far that edge lies (0 inside the area)."""
        d = pairwise_haversine_km(np.atleast_1d(lat), np.atleast_1d(lon), self.lat, self.lon)
        gap = (d - REACH_SIGMAS * self.sigma[None]).clip(0)
        label = np.where(gap > 0, 1e9 + gap, d).argmin(axis=1)  # inside several areas: the nearest label
        return label, gap[np.arange(len(gap)), label]


@dataclass(frozen=True)
class Rule:
    """The check at one radius: its calibration, its thresholds (log10 likelihood ratios; ``-inf``: never
    decides) and what it gave on the validation claims."""

    km: float
    calibration: tuple[float, float, float]
    """``(a, b, c)``: P(in the circle) = sigmoid(a · logit M + b · logit M0 + c)."""
    country: tuple[float, float]
    """Country ratio: at or below the first, inconsistent; at or above the second, the country is supported."""
    place: float
    """Place ratio: at or below it, inconsistent."""
    validation: dict = field(default_factory=dict, compare=False)

    def vector(self) -> np.ndarray:
        return np.array([*self.calibration, *self.country, self.place], dtype=np.float64)

    @classmethod
    def from_vector(cls, km: float, v: np.ndarray) -> Rule:
        return cls(float(km), (float(v[0]), float(v[1]), float(v[2])), (float(v[3]), float(v[4])), float(v[5]))

    def to_dict(self) -> dict:
        return {"km": self.km, "calibration": list(self.calibration),
                "country": {"inconsistent": _finite(self.country[0]), "consistent": _finite(self.country[1])},
                "place": {"inconsistent": _finite(self.place)}, "validation": self.validation}

    @classmethod
    def from_dict(cls, data: dict) -> Rule:
        def threshold(value: object) -> float:
            return -math.inf if value is None else float(value)  # type: ignore[arg-type]

        a, b, c = (float(v) for v in data["calibration"])
        country = (threshold(data["country"].get("inconsistent")), threshold(data["country"].get("consistent")))
        return cls(float(data["km"]), (a, b, c), country, threshold(data["place"].get("inconsistent")),
                   dict(data.get("validation") or {}))


@dataclass
class Evidence:
    """What photos say about claims at one radius: ``(photos, claims)`` arrays; ``prior`` and ``known`` (whether
    the circle reaches any label's area) broadcast to them; per claim, the countries the circle reaches, the label
    whose area lies nearest and how far beyond the circle its edge is."""

    mass: np.ndarray
    prior: np.ndarray
    log_ratio: np.ndarray
    country_log_ratio: np.ndarray
    place_log_ratio: np.ndarray
    countries: list[str]
    known: np.ndarray
    nearest: np.ndarray
    gap_km: np.ndarray


class ClaimCheck:
    """Likelihood ratio, calibrated probability and verdict for claims about photos (one way, every caller)."""

    def __init__(self, rules: Sequence[Rule], areas: LabelAreas, fitted_on: dict | None = None) -> None:
        if not rules:
            raise ModelError("the claim check holds no rule")
        self.rules = sorted(rules, key=lambda r: r.km)
        self.areas = areas
        self.fitted_on = dict(fitted_on or {})

    # --- storage ---

    def to_dict(self) -> dict:
        return {"method": METHOD, "rules": [r.to_dict() for r in self.rules], "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, data: dict | None, labels: pd.DataFrame) -> ClaimCheck | None:
        """The check a bundle's ``verify`` section describes (``None`` when it has none); one clear error for a
        section this version cannot read."""
        if not data:
            return None
        if not isinstance(data, dict) or data.get("method") != METHOD:
            kind = data.get("method") if isinstance(data, dict) else data
            raise ModelError(f"its claim check is of another kind ({kind!r}; this geoscope reads {METHOD!r}): "
                             "refit it with scripts/fit_verify.py")
        try:
            rules = [Rule.from_dict(r) for r in data["rules"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"its claim check is incomplete ({exc!s}): refit it with scripts/fit_verify.py") from None
        return cls(rules, LabelAreas(labels), data.get("fitted_on"))

    # --- the one computation ---

    def rule(self, km: float) -> Rule:
        """The rule at ``km``: the fitted one, or interpolated in log km between the two around it (the nearest
        outside the fitted radii)."""
        kms = np.array([r.km for r in self.rules])
        if km <= kms[0] or len(kms) == 1:
            return self.rules[0]
        if km >= kms[-1]:
            return self.rules[-1]
        hi = int(np.searchsorted(kms, km))
        lo = hi - 1
        t = (math.log(km) - math.log(kms[lo])) / (math.log(kms[hi]) - math.log(kms[lo]))
        a, b = self.rules[lo].vector(), self.rules[hi].vector()
        with np.errstate(invalid="ignore"):
            v = np.where(np.isinf(a) | np.isinf(b), np.minimum(a, b), (1 - t) * a + t * b)
        return Rule.from_vector(km, v)

    def evidence(self, probabilities: np.ndarray, lat: np.ndarray, lon: np.ndarray, km: float) -> Evidence:
        """The evidence of each probability row ``(photos, labels)`` about each claim (points ``lat``, ``lon``, all
        within ``km``)."""
        return _evidence(self.areas, np.asarray(probabilities, dtype=np.float64), np.atleast_1d(lat),
                         np.atleast_1d(lon), km)

    def probability(self, evidence: Evidence, rule: Rule) -> np.ndarray:
        """Calibrated probability that each photo lies in each claim's circle."""
        a, b, c = rule.calibration
        return _sigmoid(a * _logit(evidence.mass) + b * _logit(evidence.prior) + c)

    @staticmethod
    def decide(evidence: Evidence, rule: Rule, in_coverage: np.ndarray | None = None) -> np.ndarray:
        """The verdict of each photo about each claim, ``(photos, claims)`` of :data:`VERDICTS` indices."""
        return _decide(evidence, rule, in_coverage)

    def check(self, probabilities: np.ndarray, claim: Claim, *, in_coverage: Sequence[bool | None] | None = None,
              coverage_scores: Sequence[float | None] | None = None,
              images: Sequence[str] | None = None) -> list[Verdict]:
        """One :class:`Verdict` per probability row (a photo, or the fused views of a place) about ``claim``."""
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1, len(self.areas.prior))
        n = len(p)
        images = [str(i) for i in range(n)] if images is None else list(images)
        covered = [None] * n if in_coverage is None else list(in_coverage)
        scores = [None] * n if coverage_scores is None else list(coverage_scores)
        finite = np.isfinite(p).all(axis=1)
        rule = self.rule(claim.km)
        ev = self.evidence(np.nan_to_num(p), np.array([claim.lat]), np.array([claim.lon]), claim.km)
        covered_array = np.array([c is not False for c in covered], dtype=bool)
        codes = self.decide(ev, rule, covered_array)[:, 0]
        calibrated = self.probability(ev, rule)[:, 0]
        known = bool(ev.known[0, 0])
        out = []
        for i in range(n):
            if not finite[i]:
                out.append(Verdict(images[i], claim, error="the model produced no finite probabilities"))
                continue
            verdict = VERDICTS[codes[i]]
            score = scores[i]
            out.append(Verdict(
                image=images[i], claim=claim, verdict=verdict,
                reason=self._reason(verdict, ev, rule, i, covered[i]),
                likelihood_ratio=_ratio(ev.log_ratio[i, 0]) if known else None,
                probability=float(calibrated[i]) if known else None,
                prior_probability=float(ev.prior[0, 0]),
                country=(ev.countries[0] or None) if known else None,
                country_likelihood_ratio=_ratio(ev.country_log_ratio[i, 0]) if known else None,
                place_likelihood_ratio=_ratio(ev.place_log_ratio[i, 0]) if known else None,
                in_coverage=covered[i],
                coverage_score=None if score is None or not math.isfinite(score) else float(score)))
        return out

    def _reason(self, verdict: str, ev: Evidence, rule: Rule, i: int, covered: bool | None) -> str:
        """One sentence: why this verdict."""
        country = ev.countries[0] or "its country"
        if covered is False:
            return "the photo is outside what this model knows (its coverage test), so it cannot judge any claim"
        if not ev.known[0, 0]:
            name = self.areas.names[int(ev.nearest[0])]
            return (f"this model knows no place within {_km(rule.km)} of the point: the nearest area it was trained "
                    f"on ({name}) is {_km(float(ev.gap_km[0]))} beyond that")
        c, q = ev.country_log_ratio[i, 0], ev.place_log_ratio[i, 0]
        place = (f"place likelihood ratio {_shown(q)}: the photo favours this point within {country}"
                 if q >= math.log10(SUPPORT) else f"place likelihood ratio {_shown(q)}: nothing in the photo "
                 f"points away from this point within {country}, nor much towards it")
        if verdict == "inconsistent":
            if c <= rule.country[0]:
                return f"the photo points away from {country} (country likelihood ratio {_shown(c)})"
            return f"within {country}, the photo points away from this point (place likelihood ratio {_shown(q)})"
        if verdict == "consistent":
            return f"the photo supports {country} (country likelihood ratio {_shown(c)}); {place}"
        return (f"not enough evidence either way: the photo neither supports nor rules out {country} (country "
                f"likelihood ratio {_shown(c)})")

    # --- fitting ---

    @classmethod
    def fit(cls, probabilities: np.ndarray, lat: np.ndarray, lon: np.ndarray, labels: pd.DataFrame, *,
            in_coverage: np.ndarray | None = None, radii: Sequence[float] = RADII_KM,
            targets: Targets = Targets(), max_claims: int = 1500, seed: int = 0) -> ClaimCheck:
        """Fit on validation photos (or places, views fused): their probability rows ``(n, labels)``, true
        coordinates and whether each is in coverage.

        The claims: every photo's own point (true), and the points of (at most ``max_claims``) validation photos
        as claims about every photo (true where within the radius, false elsewhere; in another country
        where the labels name another). At each radius the calibration is fitted on all of them, and the
        thresholds (:class:`Targets`) on the photos in coverage.
        """
        p = np.asarray(probabilities, dtype=np.float64)
        lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        n = len(p)
        if n < 20:
            raise GeoscopeError(f"fitting a claim check needs at least 20 validation photos (got {n})")
        covered = np.ones(n, dtype=bool) if in_coverage is None else np.asarray(in_coverage, dtype=bool)
        areas = LabelAreas(labels)
        claims = np.arange(n)
        if n > max_claims:
            claims = np.sort(np.random.default_rng(seed).choice(n, size=max_claims, replace=False))
        distance = pairwise_haversine_km(lat, lon, lat[claims], lon[claims])
        own = country_of_points(areas, lat, lon)
        other_country = (own[:, None] != own[claims][None]) & (own[:, None] >= 0) & (own[claims][None] >= 0)
        same = own[:, None] == own[claims][None]
        rules = []
        for km in sorted(float(r) for r in radii):
            pairs = _evidence(areas, p, lat[claims], lon[claims], km)
            truth = _evidence(areas, p, lat, lon, km, diagonal=True)
            hit = distance <= km
            calibration = _calibration(pairs, hit)
            kinds = {"other_country": other_country, "same_country_far": same & (distance >= far_km(km)),
                     "true_off_centre": hit & (distance > km / 2)}  # true claims whose point is off the photo
            weights = {"other_country": other_country * claim_weights(own[claims])[None],
                       **{kind: _per_photo(kinds[kind]) for kind in ("same_country_far", "true_off_centre")}}
            centre = covered & truth.known[:, 0]
            off = covered[:, None] & kinds["true_off_centre"] & pairs.known
            lo = tuple(min(_quantile(at_centre[centre, 0], targets.true_inconsistent),
                           _quantile(around[off], targets.true_inconsistent, weights["true_off_centre"][off],
                                     empty=math.inf), -math.log10(SUPPORT))
                       for at_centre, around in ((truth.country_log_ratio, pairs.country_log_ratio),
                                                 (truth.place_log_ratio, pairs.place_log_ratio)))
            others = covered[:, None] & other_country & pairs.known
            hi_country = _quantile(pairs.country_log_ratio[others], 1 - targets.other_country_consistent,
                                   weights["other_country"][others])
            if lo[0] > -math.inf:  # a country level to test (more than one country)
                hi_country = max(math.log10(SUPPORT), hi_country)
            rule = Rule(km, calibration, (lo[0], hi_country), lo[1])
            decided = _decide(pairs, rule, covered)
            validation = {"true": verdict_shares(_decide(truth, rule, covered))}
            for kind, mask in kinds.items():
                validation[kind] = verdict_shares(decided[mask], weights[kind][mask])
            rules.append(Rule(km, calibration, rule.country, rule.place, validation))
        fitted_on = {"photos": int(n), "in_coverage": int(covered.sum()), "claim_points": len(claims),
                     "targets": {"true_inconsistent": targets.true_inconsistent,
                                 "other_country_consistent": targets.other_country_consistent}}
        return cls(rules, areas, fitted_on)


def _evidence(areas: LabelAreas, p: np.ndarray, lat: np.ndarray, lon: np.ndarray, km: float, *,
              diagonal: bool = False) -> Evidence:
    """Evidence of rows ``p`` about claims at ``lat``, ``lon``: ``(photos, claims)`` arrays, or with ``diagonal``
    row i about claim i only, as ``(photos, 1)``."""
    w = areas.within(lat, lon, km)  # (claims, labels)
    prior_in = w * areas.prior[None]
    m0 = prior_in.sum(axis=1)
    share = prior_in @ areas.membership / np.maximum(m0, 1e-300)[:, None]  # (claims, countries)
    reached = share >= COUNTRY_SHARE
    label, gap = areas.nearest(lat, lon)
    reached[np.arange(len(reached)), areas.country_code[label]] |= m0 <= 0  # a circle between areas: the nearest's
    in_countries = (reached @ areas.membership.T > 0).astype(np.float64)  # (claims, labels)
    pi_c = in_countries @ areas.prior
    m0_c = (prior_in * in_countries).sum(axis=1)
    if diagonal:
        def rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.einsum("nl,nl->n", a, b)[:, None]

        def per_claim(v: np.ndarray) -> np.ndarray:
            return v[:, None]
    else:
        def rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return a @ b.T

        def per_claim(v: np.ndarray) -> np.ndarray:
            return v[None, :]
    mass, p_c, mass_c = rows(p, w), rows(p, in_countries), rows(p, w * in_countries)
    prior, prior_c = per_claim(m0), per_claim(pi_c)
    log_ratio = _log10_odds(mass) - _log10_odds(prior)
    with np.errstate(invalid="ignore", divide="ignore"):
        country = np.where(prior_c >= 1 - 1e-9, np.nan, _log10_odds(p_c) - _log10_odds(prior_c))
        inside = mass_c / p_c
        prior_inside = per_claim(m0_c / np.maximum(pi_c, 1e-300))
        place = np.where(p_c > 1e-12, _log10_odds(np.nan_to_num(inside)) - _log10_odds(prior_inside), 0.0)
    names = [" / ".join(str(c) for c in areas.countries[r] if c) for r in reached]
    return Evidence(mass, prior, log_ratio, country, place, names, per_claim(gap <= km), label, gap)


def _decide(ev: Evidence, rule: Rule, in_coverage: np.ndarray | None) -> np.ndarray:
    country = np.nan_to_num(ev.country_log_ratio, nan=np.inf)  # a level not tested never decides
    place = ev.place_log_ratio
    inconsistent = (country <= rule.country[0]) | (place <= rule.place)
    consistent = (country >= rule.country[1]) & ~inconsistent
    codes = np.where(inconsistent, 1, np.where(consistent, 0, 2))
    codes = np.where(ev.known, codes, 2)
    if in_coverage is not None:
        codes = np.where(np.asarray(in_coverage, dtype=bool)[:, None], codes, 2)
    return codes


def country_of_points(areas: LabelAreas, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Each point's country as the labels name it (the country of the label whose area's edge is nearest, the
    label itself when several hold the point; −1 where the labels name no country)."""
    code = areas.country_code[areas.nearest(lat, lon)[0]]
    return np.where(areas.countries[code] != "", code, -1)


def far_km(km: float) -> float:
    """How far from a photo a claim's point must lie to count as a far false claim of radius ``km``: at least
    :data:`FAR_KM` and twice the radius (the photo then lies at least ``km`` outside the circle)."""
    return max(FAR_KM, 2.0 * km)


def _per_photo(mask: np.ndarray) -> np.ndarray:
    """Weights of ``(photos, claims)`` pairs that give every photo's claims in ``mask`` one weight in all."""
    return mask / np.maximum(mask.sum(axis=1, keepdims=True), 1)


def _calibration(pairs: Evidence, hit: np.ndarray) -> tuple[float, float, float]:
    """The logistic fit of P(in the circle) on ``logit M`` and ``logit M0`` over every (photo, claim) pair."""
    from sklearn.linear_model import LogisticRegression

    y = hit.ravel()
    if y.all() or not y.any():  # nothing to learn: the rate seen
        return 0.0, 0.0, float(_logit(np.array([y.mean()]))[0])
    x = np.stack([_logit(pairs.mass).ravel(), np.broadcast_to(_logit(pairs.prior), hit.shape).ravel()], axis=1)
    model = LogisticRegression(C=10.0).fit(x, y)
    return float(model.coef_[0, 0]), float(model.coef_[0, 1]), float(model.intercept_[0])


def claim_weights(country: np.ndarray) -> np.ndarray:
    """Each claim point's weight among the false claims about a photo in another country: one over the number of
    points in its country, so that every other country weighs as much (the London photos' claims would
    otherwise be mostly in the other London)."""
    _, code, counts = np.unique(country, return_inverse=True, return_counts=True)
    return 1.0 / counts[code]


def verdict_shares(codes: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """The share of each verdict (:data:`VERDICTS` indices) among claims, weighted, and how many claims (of
    weight above 0)."""
    codes = np.asarray(codes).ravel()
    w = np.ones(len(codes)) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    total = max(float(w.sum()), 1e-300)
    return {"claims": int(np.count_nonzero(w)),
            **{v: round(float(w[codes == i].sum()) / total, 4) for i, v in enumerate(VERDICTS)}}


def _quantile(values: np.ndarray, q: float, weights: np.ndarray | None = None, empty: float = -math.inf) -> float:
    """The (weighted) ``q`` quantile of the finite ``values``; ``empty`` when there are none."""
    finite = np.isfinite(values)
    values = values[finite]
    if not len(values):
        return empty
    if weights is None:
        return float(np.quantile(values, q))
    w = np.asarray(weights, dtype=np.float64)[finite]
    order = np.argsort(values)
    cumulative = np.cumsum(w[order]) / w.sum()
    return float(values[order][min(int(np.searchsorted(cumulative, q)), len(values) - 1)])


def _log10_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), FLOOR, 1 - FLOOR)
    return np.log10(p / (1 - p))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), FLOOR, 1 - FLOOR)
    return np.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _ratio(log10_ratio: float) -> float | None:
    return None if not math.isfinite(log10_ratio) else float(10.0 ** log10_ratio)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _significant(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def format_ratio(ratio: float | None) -> str:
    """A likelihood ratio as a person reads it: ``12``, ``1/40``, ``over 10,000``; ``n/a`` for none."""
    if ratio is None or not math.isfinite(ratio) or ratio <= 0:
        return "n/a" if ratio is None or not math.isfinite(ratio) else f"under 1/{SHOWN_LIMIT:,.0f}"
    if ratio >= SHOWN_LIMIT:
        return f"over {SHOWN_LIMIT:,.0f}"
    if ratio <= 1 / SHOWN_LIMIT:
        return f"under 1/{SHOWN_LIMIT:,.0f}"
    if ratio >= 1:
        return f"{ratio:,.3g}" if ratio < 1000 else f"{ratio:,.0f}"
    return f"1/{1 / ratio:,.3g}" if ratio > 1e-3 else f"1/{1 / ratio:,.0f}"


def _shown(log10_ratio: float) -> str:
    return format_ratio(10.0 ** log10_ratio if math.isfinite(log10_ratio) else None)


def _km(value: float) -> str:
    return f"{value:,.0f} km" if value >= 10 else f"{value:.3g} km"
