"""Names people recognise: where a label's images are, said as "place, region, country".

A label is named after the most populous gazetteer place within its images' spread of its
geographic medoid, in the same country and first-level region; two labels never share a
name (the next place in range, else a compass direction: "north of Winnemucca"). The
gazetteer is GeoNames' places of 500 people, then US post-office towns where GeoNames has none.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from .places import country_regions, load_places, nearest_place, post_towns
from .regions import country_names, country_of
from .sphere import haversine_km

NAMING_MIN_POPULATION = 500
"""Smallest place that can name a label."""
MIN_REACH_KM, MAX_REACH_KM = 5.0, 40.0
"""A label is named from places within its images' median distance of its medoid, clipped to this range."""
MEDOID_CANDIDATES = 400
COMPASS = ("north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west")


@functools.lru_cache(maxsize=1)
def naming_towns() -> pd.DataFrame:
    """The places that can name a label: GeoNames' places of :data:`NAMING_MIN_POPULATION` people, most
    populous first, then the US post-office towns GeoNames lacks (:func:`geoscope.geo.places.post_towns`)."""
    return pd.concat([load_places(None, min_population=NAMING_MIN_POPULATION), post_towns()], ignore_index=True)


def geographic_medoid(lat: ArrayLike, lon: ArrayLike, seed: int = 0) -> tuple[float, float]:
    """The point among these whose summed great-circle distance to the others is least.

    Large groups are judged on a random sample of :data:`MEDOID_CANDIDATES` points.
    """
    la, lo = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    if len(la) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(la), size=min(len(la), MEDOID_CANDIDATES), replace=False)
    d = haversine_km(la[pick][:, None], lo[pick][:, None], la[pick][None], lo[pick][None])
    best = pick[int(np.argmin(d.sum(axis=1)))]
    return float(la[best]), float(lo[best])


def locate(lat: ArrayLike, lon: ArrayLike) -> pd.DataFrame:
    """Country code, country name and first-level region of each point.

    The country is the Natural Earth country holding the point (at sea: its nearest town's);
    the region is that of the nearest gazetteer town in that country.
    """
    la = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    lo = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    towns = naming_towns()
    codes = country_of(la, lo)
    index, _ = nearest_place(la, lo, towns)
    at_sea = codes == ""
    codes[at_sea] = towns["country_code"].to_numpy()[index[at_sea]]
    regions = towns["region"].to_numpy()[index].astype(object)
    for code in np.unique(codes):
        rows = codes == code
        local = towns[towns["country_code"] == code]
        if len(local) and rows.any():
            regions[rows] = local["region"].to_numpy()[nearest_place(la[rows], lo[rows], local)[0]]
    names = country_names()
    return pd.DataFrame({"country_code": codes.astype(str), "country": [names.get(c, c) for c in codes],
                         "region": regions})


def partly_covered(lat: ArrayLike, lon: ArrayLike, min_places: int) -> tuple[pd.DataFrame, dict[str, tuple[str, ...]]]:
    """Where points are (:func:`locate`), and the countries they cover only in part: for each, its first-level
    regions holding at least ``min_places`` distinct points (by code; a country is covered in part when some of its
    regions hold fewer, or none)."""
    where = locate(lat, lon)
    points = pd.DataFrame({"code": where["country_code"], "region": where["region"],
                           "lat": np.atleast_1d(np.asarray(lat, dtype=np.float64)),
                           "lon": np.atleast_1d(np.asarray(lon, dtype=np.float64))}).drop_duplicates()
    counts = points[points["region"] != ""].groupby(["code", "region"]).size()
    covered: dict[str, tuple[str, ...]] = {}
    for (code, region), n in counts.items():
        if n >= min_places:
            covered[str(code)] = (*covered.get(str(code), ()), str(region))
    return where, {code: tuple(sorted(regions)) for code, regions in covered.items()
                   if set(regions) < country_regions(code)}


def majority(values: ArrayLike) -> str:
    """The most frequent value (ties: the first in sorted order)."""
    series = pd.Series(np.asarray(values, dtype=object))
    return str(series.value_counts().sort_index().idxmax()) if len(series) else ""


def name_labels(lat: ArrayLike, lon: ArrayLike, reach_km: ArrayLike, country_code: ArrayLike,
                region: ArrayLike, *, fixed: ArrayLike | None = None) -> pd.DataFrame:
    """Unique readable names for labels at ``lat``/``lon`` (their medoids).

    ``reach_km`` is each label's spread (median distance of its images to the medoid);
    ``country_code``/``region`` say where its images are. ``fixed`` gives a place name to keep
    for some labels (a city scheme's city), ``None`` elsewhere. Returns columns ``place``,
    ``region``, ``country``, ``country_code`` and ``name`` ("Croydon, England, United Kingdom").
    Labels holding more images should come first: they get the first pick of names.
    """
    la, lo = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    codes = [str(c) for c in np.asarray(country_code, dtype=object)]
    regions = [str(r) if isinstance(r, str) else "" for r in np.asarray(region, dtype=object)]
    reach = np.clip(np.nan_to_num(np.asarray(reach_km, dtype=np.float64), nan=MIN_REACH_KM),
                    MIN_REACH_KM, MAX_REACH_KM)
    keep = list(fixed) if fixed is not None else [None] * len(la)
    towns = naming_towns()
    taken: set[tuple[str, str]] = set()
    places, shown_regions = [], []
    for i in range(len(la)):
        place, town_region = (keep[i], regions[i]) if isinstance(keep[i], str) and keep[i] else \
            _pick_place(towns, la[i], lo[i], reach[i], codes[i], regions[i], taken)
        taken.add((place, codes[i]))
        places.append(place)
        shown_regions.append(town_region)
    names = country_names()
    country = [names.get(c, c) for c in codes]
    # a town is named with its own region ("Medford, Oregon" even for a label mostly in California)
    full = [display_name(p, r, c) for p, r, c in zip(places, shown_regions, country, strict=True)]
    return pd.DataFrame({"place": places, "region": regions, "country": country, "country_code": codes,
                         "name": _dedupe(full, places, la, lo, towns)})


def display_name(place: str, region: str, country: str) -> str:
    """ "Croydon, England, United Kingdom"; a region named like its place is said once."""
    return ", ".join(part for part in dict.fromkeys((place, region, country)) if part)


def _pick_place(towns: pd.DataFrame, lat: float, lon: float, reach: float, code: str, region: str,
                taken: set[tuple[str, str]]) -> tuple[str, str]:
    """The most populous untaken town within ``reach``, else within :data:`MAX_REACH_KM` (a town of the
    label's region first, at either range; GeoNames places first, post-office towns only if none), else a
    direction from the nearest town ("north of Lakeview"), with the distance when that town is farther than
    :data:`MAX_REACH_KM` ("78 km north of Winnemucca"); with the first-level region of the town named."""
    same_country = towns[towns["country_code"] == code] if code else towns
    if same_country.empty:
        same_country = towns
    d = haversine_km(lat, lon, same_country["lat"].to_numpy(), same_country["lon"].to_numpy())
    town_regions = same_country["region"].to_numpy()
    in_region = town_regions == region
    counted = same_country["population"].to_numpy() > 0  # GeoNames places before post-office towns
    for pool in [tier & where for tier in (counted, ~counted)
                 for where in (in_region & (d <= reach), in_region & (d <= MAX_REACH_KM), d <= reach,
                               d <= MAX_REACH_KM)]:
        near = np.flatnonzero(pool)  # towns are ordered most populous first
        for j in near:
            name = str(same_country["name"].iloc[j])
            if (name, code) not in taken:
                return name, str(town_regions[j])
    nearest = int(np.argmin(d))
    town = same_country.iloc[nearest]
    where = f"{_direction(town['lat'], town['lon'], lat, lon)} of {town['name']}"
    return (where if d[nearest] <= MAX_REACH_KM else f"{d[nearest]:.0f} km {where}"), str(town_regions[nearest])


def _direction(from_lat: float, from_lon: float, to_lat: float, to_lon: float) -> str:
    """Compass direction (eight points) from one point to another."""
    p1, p2 = np.radians(from_lat), np.radians(to_lat)
    dl = np.radians(to_lon - from_lon)
    bearing = np.degrees(np.arctan2(np.sin(dl) * np.cos(p2),
                                    np.cos(p1) * np.sin(p2) - np.sin(p1) * np.cos(p2) * np.cos(dl)))
    return COMPASS[int(np.round((bearing % 360) / 45.0)) % 8]


def _dedupe(full: list[str], places: list[str], lat: NDArray, lon: NDArray, towns: pd.DataFrame) -> list[str]:
    """Make repeated names distinct by the distance and direction from the named place."""
    out = list(full)
    counts = pd.Series(full).value_counts()
    for name in counts[counts > 1].index:
        rows = [i for i, n in enumerate(full) if n == name]
        match = towns[towns["name"] == places[rows[0]]]
        for i in rows[1:]:
            if match.empty:
                out[i] = f"{name} ({lat[i]:.2f}, {lon[i]:.2f})"
                continue
            d = haversine_km(lat[i], lon[i], match["lat"].to_numpy(), match["lon"].to_numpy())
            town = match.iloc[int(np.argmin(d))]
            out[i] = (f"{float(np.min(d)):.0f} km {_direction(town['lat'], town['lon'], lat[i], lon[i])} "
                      f"of {name}")
    return out
