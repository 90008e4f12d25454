"""What the web page reads besides predictions: its own files, the base map, the model's places and the
training photos evidence points to.

The base map is Natural Earth's admin-0 countries (the outlines :mod:`geoscope.geo.regions`
reads offline), simplified once per process and kept gzipped in memory, so the page
needs nothing from the internet. Over it, for the countries the page asks for (the model's, then
those of the guesses), each country's layer: its first-level borders, approximated from the GeoNames
towns geoscope ships (:mod:`geoscope.geo.first_level`: Voronoi cells of the towns dissolved by region and
clipped to the country, so they are approximate), its regions' names and its larger places; each
country's layer is made on first request (a few seconds for the default model's four countries) and
kept for the process. Thumbnails of training photos are made only from the paths the bundle recorded
(:meth:`GeoModel.gallery_image`), found by gallery row: a request never names a file.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import BadImageError
from ..images import open_image
from ..predict import GeoModel

WEB_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "web"
"""The page's HTML, JavaScript and CSS (package data)."""

SIMPLIFY_DEGREES = 0.02
"""Largest deviation of the simplified country outlines (about 2 km): enough for a map of guesses."""
PRECISION_DEGREES = 0.01
BORDER_SIMPLIFY_DEGREES = 0.01
"""Largest deviation of the simplified first-level borders (about 1 km; they are approximate anyway)."""
BORDER_PRECISION_DEGREES = 0.001
PLACE_MIN_POPULATION = 15_000
"""A country's layer names every place of at least this many people…"""
PLACES_PER_REGION = 5
"""…and the most populous few of each first-level region, however small (so sparse regions have names too)."""
MAX_MAP_COUNTRIES = 16
"""Most countries one request for layers names; a model with places in more countries (a zero-shot one over the
world) gets no layer of its own, only those of its guesses' countries."""
THUMBNAIL_PX = 240
"""Longest side of a training photo's thumbnail."""
APPROXIMATE = ("first-level borders approximated from GeoNames towns: the Voronoi cells of the towns of 1,000 "
               "people and more, dissolved by first-level region and clipped to the country, not surveyed lines")


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


def model_countries(model: GeoModel) -> list[str]:
    """The countries (ISO alpha-2 codes) of the model's labels; none for a model with places in more than
    :data:`MAX_MAP_COUNTRIES` of them."""
    from ..geo.regions import country_of

    labels = model.labels
    codes = labels["country_code"] if "country_code" in labels else country_of(labels["lat"], labels["lon"])
    found = sorted({str(c).upper() for c in codes if isinstance(c, str) and len(c) == 2})
    return found if len(found) <= MAX_MAP_COUNTRIES else []


def regions_geojson(countries: Sequence[str]) -> bytes:
    """The layers of ``countries`` (ISO alpha-2 codes) as one gzipped GeoJSON FeatureCollection, its
    ``approximate`` member saying how the borders were drawn (:func:`country_layer`)."""
    return _regions_geojson(tuple(sorted({c.upper() for c in countries})))


@functools.lru_cache(maxsize=64)
def _regions_geojson(countries: tuple[str, ...]) -> bytes:
    layers = [layer for layer in (country_layer(c) for c in countries) if layer]
    text = (f'{{"type":"FeatureCollection","approximate":{json.dumps(APPROXIMATE)},'
            f'"countries":{json.dumps(list(countries))},"features":[{",".join(layers)}]}}')
    return gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)


_BUILDING = threading.Lock()


def country_layer(country: str) -> str:
    """One country's features for the map, as GeoJSON text (comma-joined, without brackets): its first-level
    borders (``kind`` ``borders``: a MultiLineString, approximate), each region's name at a point inside it
    (``region``, with the ``bbox`` of its largest part) and its larger places (``place``, with ``population``);
    made once per process (:class:`~geoscope.geo.regions.RegionError` for an unknown code)."""
    with _BUILDING:  # two requests for one country: the second waits for the first's layer
        return _country_layer(country.upper())


@functools.lru_cache(maxsize=256)
def _country_layer(country: str) -> str:
    import shapely
    from shapely.ops import polylabel

    from ..geo.first_level import first_level

    regions = first_level(country)
    features = []
    if not regions.borders.is_empty:
        lines = shapely.set_precision(shapely.simplify(regions.borders, BORDER_SIMPLIFY_DEGREES),
                                      BORDER_PRECISION_DEGREES)
        features.append(_feature({"kind": "borders", "country": regions.country}, shapely.to_geojson(lines)))
    for name, area in zip(regions.names, regions.areas, strict=True):
        if area.is_empty:
            continue
        largest = max(shapely.get_parts(area), key=lambda part: part.area)
        simple = shapely.simplify(largest, BORDER_SIMPLIFY_DEGREES)
        point = polylabel(simple, 0.01) if simple.geom_type == "Polygon" and not simple.is_empty \
            else largest.representative_point()  # the point farthest inside it, where its name goes
        bbox = [round(v, 3) for v in largest.bounds]
        features.append(_feature({"kind": "region", "country": regions.country, "name": name, "bbox": bbox},
                                 _point(point.x, point.y)))
    for place in map_places(regions.country).itertuples():
        features.append(_feature({"kind": "place", "country": regions.country, "name": place.name,
                                  "population": int(place.population)}, _point(place.lon, place.lat)))
    return ",".join(features)


def map_places(country: str) -> pd.DataFrame:
    """The places a country's layer names, most populous first: every town of :data:`PLACE_MIN_POPULATION` people
    and the :data:`PLACES_PER_REGION` most populous of each first-level region (GeoNames, through
    :func:`geoscope.geo.places.load_places`), suburbs and districts left in their city
    (:func:`geoscope.geo.places.merge_suburbs`: Sesvete is Zagreb)."""
    from ..geo.places import load_places, merge_suburbs

    places = load_places(country, min_population=1000)
    largest = places.groupby("admin1", sort=False).head(PLACES_PER_REGION).index
    places = places[(places["population"] >= PLACE_MIN_POPULATION) | places.index.isin(largest)]
    return places[merge_suburbs(places)["city_id"].to_numpy() == places["place_id"].to_numpy()]


def _feature(properties: dict, geometry: str) -> str:
    text = json.dumps(properties, ensure_ascii=False, separators=(",", ":"))
    return f'{{"type":"Feature","properties":{text},"geometry":{geometry}}}'


def _point(lon: float, lat: float) -> str:
    return f'{{"type":"Point","coordinates":[{round(float(lon), 4)},{round(float(lat), 4)}]}}'


def gallery_thumbnail(model: GeoModel, row: int) -> bytes | None:
    """A small JPEG (longest side :data:`THUMBNAIL_PX`) of the training photo of kNN gallery row ``row``: only a
    photo whose path the bundle recorded and which is on this machine (None otherwise, or when it cannot be read
    as an image)."""
    path = model.gallery_image(row)
    if path is None:
        return None
    try:
        return _thumbnail(str(path), path.stat().st_mtime_ns)
    except (BadImageError, OSError):
        return None


@functools.lru_cache(maxsize=256)
def _thumbnail(path: str, modified: int) -> bytes:
    """``modified``: the file's time, so that a photo changed since is read again."""
    image = open_image(path, min_size=(THUMBNAIL_PX, THUMBNAIL_PX))
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=82)
    return out.getvalue()
