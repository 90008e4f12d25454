"""Place labels for a manifest: the seed's two ways (grid cells, top-N cities), semantic
geocells (regions split by the density of the data), H3 hexagons, or a column.

A label table has one row per place a model can answer: ``label`` (0…n−1), ``name``
("Croydon, England, United Kingdom": unique, see :mod:`geoscope.geo.naming`), ``lat``/``lon``
(the geographic medoid of the training images it holds, the point a prediction of that
label stands for), ``count``, ``spread_km`` (median distance of its images to that point),
and the hierarchy: ``place``, ``region``, ``country``, ``country_code``.
Scheme-specific columns (grid bounds, city population, H3 cell) follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import GeoscopeError
from .cells import assign_grid, assign_nearest, grid_cells
from .geocells import geocell_ids
from .naming import geographic_medoid, locate, majority, name_labels
from .places import cities_table, load_places, merge_suburbs
from .regions import country_names, region_from_points
from .sphere import haversine_km

KINDS = ("geocells", "grid", "cities", "h3", "column")


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
    elif scheme.kind == "geocells":
        ids = geocell_ids(frame["lat"], frame["lon"], min_images=int(scheme.params.get("min_images", 30)),
                          max_images=int(scheme.params.get("max_images", 400)))
        table = pd.DataFrame({"label": np.arange(int(ids.max()) + 1)})
    elif scheme.kind == "h3":
        cells = h3_cells(frame["lat"], frame["lon"], int(scheme.params.get("h3_res", 4)))
        names, ids = np.unique(cells, return_inverse=True)
        table = pd.DataFrame({"label": np.arange(len(names)), "h3": names})
    elif scheme.kind == "column":
        column = scheme.params["column"]
        if column not in frame:
            raise GeoscopeError(f"manifest has no column {column!r} to take labels from")
        values = frame[column].astype(str)
        names = sorted(values.unique())
        table = pd.DataFrame({"label": np.arange(len(names)), "value": names})
        ids = pd.Index(names).get_indexer(values)
    else:
        raise GeoscopeError(f"unknown label kind {scheme.kind!r}: use one of {', '.join(KINDS)}")
    return _keep_used(frame, np.asarray(ids, dtype=np.int64), table)


def assign_labels(lat: np.ndarray, lon: np.ndarray, table: pd.DataFrame, scheme: LabelScheme,
                  values: pd.Series | None = None) -> np.ndarray:
    """The label of new points under a trained model's table (``-1`` where none applies)."""
    if scheme.kind == "grid":
        return assign_grid(lat, lon, table.rename(columns={"label": "cell_id"}))
    if scheme.kind == "cities":
        centres = table.assign(lat=table["city_lat"], lon=table["city_lon"])  # not the image medoids
        return assign_nearest(lat, lon, centres, scheme.params.get("radius_km"), id_column="label")
    if scheme.kind == "geocells":
        return _nearest_in_country(np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64), table)
    if scheme.kind == "h3":
        lookup = dict(zip(table["h3"].astype(str), table["label"], strict=True))
        cells = h3_cells(lat, lon, int(scheme.params.get("h3_res", 4)))
        return np.array([lookup.get(c, -1) for c in cells], dtype=np.int64)
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
    lat, lon = frame["lat"].to_numpy(dtype=np.float64), frame["lon"].to_numpy(dtype=np.float64)
    where = locate(lat, lon)
    members = [new_ids == k for k in range(used.size)]
    medoids = np.array([geographic_medoid(lat[m], lon[m]) for m in members])
    spread = np.array([np.median(haversine_km(lat[m], lon[m], *medoids[k])) for k, m in enumerate(members)])
    country = np.array([majority(where["country_code"].to_numpy()[m]) for m in members], dtype=object)
    region = np.array([majority(where["region"].to_numpy()[m & (where["country_code"].to_numpy() == c)])
                       for m, c in zip(members, country, strict=True)], dtype=object)
    counts = np.bincount(new_ids[new_ids >= 0], minlength=used.size)
    origin = _origin(table)
    if "lat" in table:
        table = table.rename(columns={"lat": f"{origin}_lat", "lon": f"{origin}_lon"})
    fixed = table["name"].to_numpy(dtype=object) if origin == "city" else \
        np.array([None if _is_code(v) else v for v in table["value"]], dtype=object) if "value" in table else None
    order = np.argsort(-counts, kind="stable")  # bigger labels pick their names first
    names = name_labels(medoids[order, 0], medoids[order, 1], spread[order], country[order], region[order],
                        fixed=None if fixed is None else fixed[order])
    names = names.iloc[np.argsort(order)].reset_index(drop=True)
    table = table.drop(columns=[c for c in ("name", "country_code") if c in table]).reset_index(drop=True)
    head = pd.DataFrame({"label": np.arange(used.size), "name": names["name"], "lat": medoids[:, 0],
                         "lon": medoids[:, 1], "count": counts, "spread_km": spread.round(3),
                         "place": names["place"], "region": names["region"], "country": names["country"],
                         "country_code": names["country_code"]})
    return new_ids, pd.concat([head, table], axis=1)


def _nearest_in_country(lat: np.ndarray, lon: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    """The label whose medoid is nearest, among the labels of the point's own country when it has any."""
    out = np.full(len(lat), -1, dtype=np.int64)
    ok = np.isfinite(lat) & np.isfinite(lon)
    if not ok.any():
        return out
    codes = locate(lat[ok], lon[ok])["country_code"].to_numpy()
    d = haversine_km(lat[ok][:, None], lon[ok][:, None], table["lat"].to_numpy()[None], table["lon"].to_numpy()[None])
    same = codes[:, None] == table["country_code"].astype(str).to_numpy()[None]
    d = np.where(same.any(axis=1, keepdims=True) & ~same, np.inf, d)
    out[ok] = table["label"].to_numpy()[np.argmin(d, axis=1)]
    return out


def h3_cells(lat, lon, resolution: int) -> list[str]:
    """The H3 cell (hexagon index) of each point at ``resolution`` (0 coarse … 15 fine)."""
    import h3

    if not 0 <= resolution <= 15:
        raise GeoscopeError(f"H3 resolution must be 0 to 15 (got {resolution})")
    return [h3.latlng_to_cell(float(a), float(o), resolution)
            for a, o in zip(np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64), strict=True)]


def _origin(table: pd.DataFrame) -> str:
    return "city" if "population" in table and "members" in table else "cell"


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


def _is_code(value: str) -> bool:
    """Whether a column value is a code ("17", "3.2") rather than a place name."""
    return value.replace(".", "").replace("-", "").isdigit()


def prompt(name: str, country_code: str | None = None) -> str:
    """The text a place is described by, as the seed did: "a street view photo in {name}".

    The country is added when the name does not already end with it.
    """
    country = country_names().get(country_code or "", "")
    return f"a street view photo in {name}, {country}" if country and not name.endswith(country) \
        else f"a street view photo in {name}"
