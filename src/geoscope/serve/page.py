"""What the web page reads besides predictions: its own files, the base map and the model's places.

The base map is Natural Earth's admin-0 countries (the outlines :mod:`geoscope.geo.regions`
reads offline), simplified once per process and kept gzipped in memory, so the page
needs nothing from the internet.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import numpy as np

from ..predict import GeoModel

WEB_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "web"
"""The page's HTML, JavaScript and CSS (package data)."""

SIMPLIFY_DEGREES = 0.02
"""Largest deviation of the simplified country outlines (about 2 km): enough for a map of guesses."""
PRECISION_DEGREES = 0.01


@functools.lru_cache(maxsize=1)
def countries_geojson() -> bytes:
    """Every country outline as a gzipped GeoJSON FeatureCollection (``name``, ``iso2``), simplified."""
    import shapely

    from ..geo.regions import countries

    units = countries()
    geometries = np.array([c.geometry for c in units], dtype=object)
    simplified = shapely.set_precision(shapely.simplify(geometries, SIMPLIFY_DEGREES, preserve_topology=True),
                                       PRECISION_DEGREES)
    features = [
        {"type": "Feature", "properties": {"name": c.name, "iso2": c.iso2},
         "geometry": json.loads(shapely.to_geojson(g))}
        for c, g in zip(units, simplified, strict=True) if not g.is_empty
    ]
    text = json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":"))
    return gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)


def model_places(model: GeoModel) -> list[dict]:
    """The model's places (its labels) with their coordinates: what it knows, for the coverage layer."""
    frame = model.labels
    return [{"name": str(name), "lat": round(float(lat), 5), "lon": round(float(lon), 5)}
            for name, lat, lon in zip(frame["name"], frame["lat"], frame["lon"], strict=True)]


def model_summary(model: GeoModel) -> dict:
    """``GET /model``: the bundle's name, encoder, label count, model card and coverage."""
    config = model.config
    card = model.path / "README.md"
    data = config.get("training", {}).get("data", {})
    return {
        "name": config.get("name"),
        "image_encoder": config.get("image_encoder", {}).get("name"),
        "labels": len(model.labels),
        "label_kind": config.get("labels", {}).get("kind"),
        "training_images": data.get("images"),
        "training_bbox": data.get("bbox"),
        "coverage": config.get("coverage"),
        "refiners": sorted(model.refiners),
        "refine": model.refine,
        "card": card.read_text(encoding="utf-8") if card.is_file() else None,
    }
