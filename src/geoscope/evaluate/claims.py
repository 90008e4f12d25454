"""Claim checks measured on a manifest: what a model's check says about true claims and false ones.

:func:`places_of` gives each place of a manifest (its views fused, as ``evaluate`` fuses them) its
probabilities and coverage through :meth:`GeoModel.place_evidence`, the answer path's first steps;
:meth:`~geoscope.answer.verify.ClaimCheck.fit` fits a check on the validation places, and
:func:`measure_claims` counts the verdicts on held-out ones:

- **true** claims: each place's own point, and (apart) every other place's point between half the radius and
  the radius from it;
- **other country**: every other place of the manifest in another country (as the model's labels name
  countries) as a claim about it, each other country weighing the same for every photo;
- **same country, far**: every place of the same country at least 200 km away (and twice the radius,
  :func:`~geoscope.answer.verify.far_km`), each photo weighing the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..answer.verify import VERDICTS, ClaimCheck, claim_weights, country_of_points, far_km, verdict_shares
from ..bundle.layout import CARD, CONFIG
from ..data.manifest import Manifest
from ..errors import GeoscopeError
from ..fileio import atomic_write_json, atomic_write_text
from ..geo.sphere import pairwise_haversine_km
from ..predict import GeoModel, load_model
from ..training.model_card import model_card
from .scoring import training_rows


@dataclass
class Places:
    """Places of a manifest as a model sees them: ``(places, labels)`` probabilities, coverage, true points."""

    probabilities: np.ndarray
    coverage_scores: np.ndarray
    in_coverage: np.ndarray
    """Whether each place is in coverage (an unknown coverage counts as in)."""
    lat: np.ndarray
    lon: np.ndarray
    images: list[str]
    """Each place's first image."""
    left_out: int = 0
    """Rows left out: images the model trained on, or that could not be read."""


def places_of(model: GeoModel, manifest: Manifest, *, progress: bool = False) -> Places:
    """Every readable place of ``manifest`` (rows of one ``location_id`` fused as views) that the model did not
    train on."""
    seen = training_rows(model, manifest)
    manifest = manifest.subset(~seen)
    features = model.image_features(manifest.image_paths, progress=progress)
    valid = np.asarray(features.valid, dtype=bool)
    if not valid.any():
        raise GeoscopeError("no image of the manifest could be read" +
                            (f" (first: {features.errors[0]})" if features.errors else ""))
    frame = manifest.frame[valid].reset_index(drop=True)
    codes, _ = pd.factorize(manifest.place_ids[valid].reset_index(drop=True))
    headings = frame["heading"].to_numpy(dtype=np.float64) if "heading" in frame else None
    x = np.asarray(features.embeddings, dtype=np.float32)[valid]
    probabilities, coverage, _ = model.place_evidence(x, codes, headings)
    firsts = ~pd.Series(codes).duplicated().to_numpy()
    places = frame[firsts].reset_index(drop=True)
    covered = np.array([c is not False for c in model.in_coverage(coverage)], dtype=bool)
    paths = [str(p) for p, first in zip(Manifest(frame, manifest.root).image_paths, firsts, strict=True) if first]
    return Places(probabilities, coverage, covered, places["lat"].to_numpy(dtype=np.float64),
                  places["lon"].to_numpy(dtype=np.float64), paths, int(seen.sum() + (~valid).sum()))


def fit_claim_check(bundle: str | Path, validation: Manifest, source: dict, *, progress: bool = False) -> ClaimCheck:
    """Fit the claim check of the bundle at ``bundle`` on ``validation`` (its places, views fused, rows the model
    trained on left out) and store it: the section ``verify`` of its ``config.json`` and the model card's
    paragraph. ``source`` says where the validation rows came from (kept in ``fitted_on``)."""
    model = load_model(bundle)
    if not len(validation):
        raise GeoscopeError("no validation rows to fit a claim check on")
    places = places_of(model, validation, progress=progress)
    check = ClaimCheck.fit(places.probabilities, places.lat, places.lon, model.labels, in_coverage=places.in_coverage)
    check.fitted_on["data"] = {**source, "rows": len(validation), "left_out": places.left_out}
    path = Path(bundle)
    config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    config["verify"] = check.to_dict()
    atomic_write_json(path / CONFIG, config)
    atomic_write_text(path / CARD, model_card(config, model.labels))
    return check


def measure_claims(check: ClaimCheck, places: Places, km: float) -> pd.DataFrame:
    """The share of each verdict (%) for true claims, false claims in another country and false claims far away in
    the same country (at least 200 km, and twice ``km``), at ``km``; all photos, as the check answers them (out of
    coverage: cannot tell), with a row of true claims about photos in coverage and one per country for true claims."""
    rule = check.rule(km)
    evidence = check.evidence(places.probabilities, places.lat, places.lon, km)
    codes = check.decide(evidence, rule, places.in_coverage)
    country = country_of_points(check.areas, places.lat, places.lon)
    distance = pairwise_haversine_km(places.lat, places.lon, places.lat, places.lon)
    other = (country[:, None] != country[None]) & (country[:, None] >= 0) & (country[None] >= 0)
    far = (country[:, None] == country[None]) & (distance >= far_km(km))
    off = (distance > km / 2) & (distance <= km)
    own = np.diag(codes)
    rows = {"true claims": _shares(own),
            "true claims, photos in coverage": _shares(own[places.in_coverage]),
            "false: another country": _shares(codes[other], (other * claim_weights(country)[None])[other]),
            f"false: same country, ≥ {far_km(km):.0f} km": _shares(
                codes[far], (far / np.maximum(far.sum(axis=1, keepdims=True), 1))[far]),
            "true, the point off the photo (½–1 × km)": _shares(
                codes[off], (off / np.maximum(off.sum(axis=1, keepdims=True), 1))[off])}
    for code in np.unique(country[country >= 0]):
        rows[f"true claims: {check.areas.countries[code]}"] = _shares(own[country == code])
    return pd.DataFrame(rows).T


def _shares(codes: np.ndarray, weights: np.ndarray | None = None) -> dict:
    shares = verdict_shares(codes, weights)
    return {"claims": shares["claims"], **{v: round(100 * shares[v], 2) for v in VERDICTS}}
