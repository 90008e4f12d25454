"""Place labels for a manifest, the seed's two ways (grid cells, top-N cities) or from a column.

A label table has one row per place a model can answer: ``label`` (0…n−1), ``name``
(a place name from the offline gazetteer), ``lat``/``lon`` (the centroid of the training
images it holds, the point a prediction of that label stands for) and ``count``.
Scheme-specific columns (grid bounds, city population) follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .cells import assign_grid, assign_nearest, grid_cells
from .errors import GeoscopeError
from .geo import haversine_km, spherical_mean
from .places import cities_table, load_places, merge_suburbs, nearest_place
from .regions import country_names, region_from_points

KINDS = ("grid", "cities", "column")


@dataclass
class LabelScheme:
    """How labels are made from coordinates, so new rows can be labelled the same way."""

    kind: str
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, **self.params}

    @classmethod
    def from_dict(cls, data: dict) -> LabelScheme:
        data = dict(data)
        return cls(data.pop("kind"), data)


def make_labels(frame: pd.DataFrame, scheme: LabelScheme) -> tuple[np.ndarray, pd.DataFrame]:
    """Label the rows of a (training) manifest frame; returns per-row label ids and the table.

    Rows that fall in no label (a city scheme's points beyond the radius) get ``-1``.
    Only labels holding at least one row are kept.
    """
    if scheme.kind == "grid":
        table = _grid_table(frame, float(scheme.params.get("cell_km", 25.0)))
        ids = assign_grid(frame["lat"], frame["lon"], table.rename(columns={"label": "cell_id"}))
    elif scheme.kind == "cities":
        table = _city_table(frame, int(scheme.params.get("top", 150)),
                            bool(scheme.params.get("merge_suburbs", True)))
        ids = assign_nearest(frame["lat"], frame["lon"], table, scheme.params.get("radius_km"),
                             id_column="label")
    elif scheme.kind == "column":
        column = scheme.params["column"]
        if column not in frame:
            raise GeoscopeError(f"manifest has no column {column!r} to take labels from")
        values = frame[column].astype(str)
        names = sorted(values.unique())
        table = pd.DataFrame({"label": np.arange(len(names)), "name": names, "value": names})
        ids = pd.Index(names).get_indexer(values)
        table["name"] = [_column_label_name(column, v, frame[values == v]) for v in names]
    else:
        raise GeoscopeError(f"unknown label kind {scheme.kind!r}: use one of {', '.join(KINDS)}")
    return _keep_used(frame, np.asarray(ids, dtype=np.int64), table)


def assign_labels(lat: np.ndarray, lon: np.ndarray, table: pd.DataFrame, scheme: LabelScheme,
                  values: pd.Series | None = None) -> np.ndarray:
    """The label of new points under a trained model's table (``-1`` where none applies)."""
    if scheme.kind == "grid":
        return assign_grid(lat, lon, table.rename(columns={"label": "cell_id"}))
    if scheme.kind == "cities":
        centres = table.assign(lat=table["city_lat"], lon=table["city_lon"])  # not the image centroids
        return assign_nearest(lat, lon, centres, scheme.params.get("radius_km"), id_column="label")
    if values is None:
        return np.full(len(lat), -1, dtype=np.int64)
    lookup = dict(zip(table["value"].astype(str), table["label"], strict=True))
    return np.array([lookup.get(str(v), -1) for v in values], dtype=np.int64)


def _keep_used(frame: pd.DataFrame, ids: np.ndarray, table: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    used = np.unique(ids[ids >= 0])
    if used.size == 0:
        raise GeoscopeError("no image falls inside any label: check the region, radius or cell size")
    table = table.set_index("label").loc[used].reset_index(drop=True)
    remap = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    new_ids = np.where(ids >= 0, remap[np.clip(ids, 0, None)], -1)
    lat, lon = frame["lat"].to_numpy(), frame["lon"].to_numpy()
    centroids = [spherical_mean(lat[new_ids == k], lon[new_ids == k]) for k in range(used.size)]
    if "lat" in table:
        table = table.rename(columns={"lat": f"{_origin(table)}_lat", "lon": f"{_origin(table)}_lon"})
    table.insert(0, "label", np.arange(used.size))
    table.insert(2, "lat", [c[0] for c in centroids])
    table.insert(3, "lon", [c[1] for c in centroids])
    table.insert(4, "count", np.bincount(new_ids[new_ids >= 0], minlength=used.size))
    if "country_code" not in table:
        world = load_places(None)
        nearest, _ = nearest_place(table["lat"], table["lon"], world)
        table["country_code"] = world["country_code"].to_numpy()[nearest]
    table["name"] = _unique_names(table["name"].astype(str).tolist(), table["country_code"].tolist())
    return new_ids, table


def _origin(table: pd.DataFrame) -> str:
    return "city" if "population" in table and "members" in table else "cell"


def _unique_names(names: list[str], countries: list[str | None]) -> list[str]:
    """Names that tell places apart: "London, United Kingdom" beside "London, Canada", then numbers."""
    repeated = {n for n in names if names.count(n) > 1}
    known = country_names()
    names = [f"{n}, {known.get(c or '', c)}" if n in repeated and c else n
             for n, c in zip(names, countries, strict=True)]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def _separate_regions(lat: np.ndarray, lon: np.ndarray, tile_deg: float = 2.0) -> np.ndarray:
    """Group points into regions: connected components of occupied ``tile_deg`` tiles."""
    keys = np.stack([np.floor(lat / tile_deg), np.floor(lon / tile_deg)], axis=1).astype(np.int64)
    tiles, inverse = np.unique(keys, axis=0, return_inverse=True)
    index = {tuple(t): i for i, t in enumerate(tiles.tolist())}
    component = np.full(len(tiles), -1, dtype=np.int64)
    for start in range(len(tiles)):
        if component[start] >= 0:
            continue
        component[start], stack = start, [start]
        while stack:
            r, c = tiles[stack.pop()]
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    j = index.get((r + dr, c + dc))
                    if j is not None and component[j] < 0:
                        component[j] = start
                        stack.append(j)
    return component[inverse.ravel()]


def _grid_table(frame: pd.DataFrame, cell_km: float) -> pd.DataFrame:
    lat, lon = frame["lat"].to_numpy(), frame["lon"].to_numpy()
    regions = _separate_regions(lat, lon)
    tables = [
        grid_cells(region_from_points(lat[regions == r], lon[regions == r], pad_km=cell_km), cell_km)
        for r in np.unique(regions)
    ]
    table = pd.concat(tables, ignore_index=True).drop_duplicates(["row", "col"], ignore_index=True)
    return table.drop(columns=["cell_id"]).assign(label=np.arange(len(table)))


def _city_table(frame: pd.DataFrame, top: int, merge: bool) -> pd.DataFrame:
    lat, lon = frame["lat"].to_numpy(), frame["lon"].to_numpy()
    region = region_from_points(lat, lon, pad_km=25.0)
    places = load_places(region).head(top)
    if places.empty:
        raise GeoscopeError("the gazetteer has no city near these images")
    table = cities_table(merge_suburbs(places) if merge else places)
    return table.rename(columns={"city_id": "geonames_id"}).assign(label=np.arange(len(table)))


def _column_label_name(column: str, value: str, rows: pd.DataFrame) -> str:
    """A column value that is a name names its label; a code is named by the nearest town."""
    if not value.replace(".", "").replace("-", "").isdigit():
        return value
    lat, lon = spherical_mean(rows["lat"], rows["lon"])
    places = load_places(region_from_points(rows["lat"].to_numpy(), rows["lon"].to_numpy(), 50.0),
                         min_population=1000)
    if places.empty:
        return f"{column} {value}"
    d = haversine_km(lat, lon, places["lat"], places["lon"])
    return str(places["name"].iloc[int(np.argmin(d))])


def prompt(name: str, country_code: str | None = None) -> str:
    """The text a place is described by, as the seed did: "a street view photo in {name}"."""
    country = country_names().get(country_code or "", "")
    return f"a street view photo in {name}, {country}" if country else f"a street view photo in {name}"
