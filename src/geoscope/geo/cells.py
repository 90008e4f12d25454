"""Partitions of the Earth into labelled cells: a regular grid, or the nearest of some cities.

The grid has rows of equal height (``cell_km`` of latitude); each row is cut into
columns about ``cell_km`` wide at its middle latitude, a whole number per 360°, so every
cell covers about ``cell_km²`` anywhere on Earth and a point's cell follows from its
coordinates alone. Ids are integers; ``-1`` means "no cell".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely
from numpy.typing import ArrayLike, NDArray

from ..errors import GeoscopeError
from .places import load_places, nearest_place
from .regions import Region, resolve_region
from .sphere import EARTH_RADIUS_KM

KM_PER_DEGREE = np.pi * EARTH_RADIUS_KM / 180.0
GRID_COLUMNS = ("cell_id", "name", "lat", "lon", "population", "land_fraction",
                "min_lat", "min_lon", "max_lat", "max_lon", "row", "col")
NAMING_MIN_POPULATION = 1000
"""Smallest place that can name a grid cell."""


def _row_height(cell_km: float) -> float:
    if not cell_km > 0:
        raise GeoscopeError(f"cell size must be positive (got {cell_km:g} km)")
    return 180.0 / max(1, round(180.0 * KM_PER_DEGREE / cell_km))


def _row_width(rows: NDArray, dlat: float, cell_km: float) -> NDArray:
    middle = -90.0 + (rows + 0.5) * dlat
    circumference = 360.0 * KM_PER_DEGREE * np.cos(np.radians(middle))
    return 360.0 / np.maximum(1, np.round(circumference / cell_km))


def grid_cells(region: Region | str, cell_km: float, *, min_land_fraction: float = 0.0,
               name_places: pd.DataFrame | None = None) -> pd.DataFrame:
    """The grid cells of about ``cell_km`` × ``cell_km`` that touch land in the region.

    Columns: ``cell_id`` (0…n−1), ``name`` (the most populous place inside the cell, else
    the nearest), ``lat``/``lon`` (centroid of the cell's land in the region),
    ``population`` (summed over gazetteer places inside, 0 where none is known),
    ``land_fraction``, the bounds ``min_lat``…``max_lon``, and the grid's ``row``/``col``.
    Cells whose land covers less than ``min_land_fraction`` of them are dropped.
    ``name_places`` overrides the gazetteer used for names (default: places of ≥1,000).
    """
    region = resolve_region(region) if isinstance(region, str) else region
    dlat = _row_height(cell_km)
    min_lat, min_lon, max_lat, max_lon = region.bbox
    rows = np.arange(int(np.floor((min_lat + 90) / dlat)), int(np.ceil((max_lat + 90) / dlat)))
    rows = rows[(rows >= 0) & (-90 + rows * dlat < 90)]
    widths = _row_width(rows, dlat, cell_km)
    records = []
    land = region.land
    for row, dlon in zip(rows, widths, strict=True):
        lat0 = -90.0 + row * dlat
        first = int(np.floor((min_lon + 180) / dlon))
        last = int(np.ceil((max_lon + 180) / dlon))
        cols = np.arange(max(first, 0), min(last, int(np.rint(360 / dlon))))
        lon0 = -180.0 + cols * dlon
        strip = shapely.clip_by_rect(land, -180.0, lat0, 180.0, lat0 + dlat)
        if strip.is_empty or len(cols) == 0:
            continue
        shapely.prepare(strip)
        boxes = shapely.box(lon0, lat0, lon0 + dlon, lat0 + dlat)
        touching = shapely.intersects(strip, boxes)
        for col, box in zip(cols[touching], boxes[touching], strict=True):
            piece = shapely.clip_by_rect(strip, *box.bounds)
            if piece.is_empty:
                continue
            fraction = piece.area / box.area
            if fraction < min_land_fraction or piece.area == 0:
                continue
            centre = piece.centroid
            if not piece.intersects(centre):
                centre = piece.representative_point()
            b = box.bounds
            records.append((int(row), int(col), centre.y, centre.x, fraction, b[1], b[0], b[3], b[2], piece))
    if not records:
        raise GeoscopeError(f"no {cell_km:g} km grid cell touches land in {region.name}")
    frame = pd.DataFrame(records, columns=["row", "col", "lat", "lon", "land_fraction",
                                           "min_lat", "min_lon", "max_lat", "max_lon", "piece"])
    frame.insert(0, "cell_id", np.arange(len(frame)))
    frame["lat"] = frame["lat"].round(6)
    frame["lon"] = frame["lon"].round(6)
    frame["land_fraction"] = frame["land_fraction"].round(4)
    frame["name"], frame["population"] = _name_cells(frame, region, name_places)
    return frame[list(GRID_COLUMNS)]


def _name_cells(frame: pd.DataFrame, region: Region,
                places: pd.DataFrame | None) -> tuple[NDArray, NDArray]:
    """Each cell's name and the population of the places inside its land."""
    if places is None:
        near = region if region.country is not None else _padded(region)
        places = load_places(near, min_population=NAMING_MIN_POPULATION)
    names = np.empty(len(frame), dtype=object)
    population = np.zeros(len(frame), dtype=np.int64)
    if len(places) == 0:
        for i, (r, c) in enumerate(zip(frame["row"], frame["col"], strict=True)):
            names[i] = f"cell {r}/{c}"
        return names, population
    plat, plon = places["lat"].to_numpy(), places["lon"].to_numpy()
    pids = assign_grid(plat, plon, frame)
    inside = np.zeros(len(places), dtype=bool)
    inside[pids >= 0] = shapely.intersects_xy(
        np.asarray(frame["piece"].to_numpy()[pids[pids >= 0]], dtype=object), plon[pids >= 0], plat[pids >= 0]
    )
    ordered = places.assign(_cell=pids, _inside=inside)
    ordered = ordered[ordered["_inside"]]
    population_by_cell = ordered.groupby("_cell")["population"].sum()
    biggest = ordered.sort_values("population", ascending=False).drop_duplicates("_cell")
    biggest = biggest.set_index("_cell")["name"]
    nearest, _ = nearest_place(frame["lat"].to_numpy(), frame["lon"].to_numpy(), places)
    for i in range(len(frame)):
        names[i] = biggest.get(i, places["name"].iloc[nearest[i]])
        population[i] = int(population_by_cell.get(i, 0))
    return names, population


def _padded(region: Region) -> Region:
    from .regions import bbox_region

    min_lat, min_lon, max_lat, max_lon = region.bbox
    return bbox_region((max(min_lat - 0.5, -90), max(min_lon - 0.5, -180),
                        min(max_lat + 0.5, 90), min(max_lon + 0.5, 180)))


def assign_grid(lat: ArrayLike, lon: ArrayLike, grid: pd.DataFrame) -> NDArray[np.int64]:
    """The ``cell_id`` of the grid cell holding each point, ``-1`` where the grid has none.

    Works from the grid table's bounds alone, so a grid read back from CSV works too.
    """
    la = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    lo = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    out = np.full(la.shape, -1, dtype=np.int64)
    if len(grid) == 0:
        return out
    heights = (grid["max_lat"] - grid["min_lat"]).to_numpy()
    dlat = float(np.median(heights))
    grid_rows = np.round((grid["min_lat"].to_numpy() + 90) / dlat).astype(np.int64)
    widths = (grid["max_lon"] - grid["min_lon"]).to_numpy()
    grid_cols = np.round((grid["min_lon"].to_numpy() + 180) / widths).astype(np.int64)
    width_of_row = dict(zip(grid_rows.tolist(), widths.tolist(), strict=True))
    lookup = pd.Index(grid_rows * 10_000_000 + grid_cols)
    ok = np.isfinite(la) & np.isfinite(lo)
    rows = np.full(la.shape, -1, dtype=np.int64)
    rows[ok] = np.floor((np.clip(la[ok], -90, 90 - 1e-12) + 90) / dlat).astype(np.int64)
    point_widths = np.array([width_of_row.get(r, np.nan) for r in rows.tolist()], dtype=np.float64)
    ok &= np.isfinite(point_widths)
    cols = np.floor((np.clip(lo[ok], -180, 180 - 1e-12) + 180) / point_widths[ok]).astype(np.int64)
    found = lookup.get_indexer(rows[ok] * 10_000_000 + cols)
    ids = grid["cell_id"].to_numpy()
    out[np.flatnonzero(ok)[found >= 0]] = ids[found[found >= 0]]
    return out


def assign_nearest(lat: ArrayLike, lon: ArrayLike, places: pd.DataFrame,
                   radius_km: float | None = None, *, id_column: str | None = None) -> NDArray[np.int64]:
    """The id of the nearest place to each point, ``-1`` where it is farther than ``radius_km``.

    Ids come from ``id_column``, by default the first of ``cell_id``, ``city_id`` or
    ``place_id`` that ``places`` has (else its row positions). This is a Voronoi partition
    of the places, cut at ``radius_km``.
    """
    index, distance = nearest_place(lat, lon, places)
    column = id_column or next((c for c in ("cell_id", "city_id", "place_id") if c in places), None)
    ids = np.arange(len(places)) if column is None else places[column].to_numpy(dtype=np.int64)
    out = ids[index].astype(np.int64)
    far = ~np.isfinite(distance) if radius_km is None else ~(distance <= radius_km)
    out[far] = -1
    return out
