"""First-level regions (states, provinces, counties) approximated from towns, offline.

geoscope ships no first-level boundaries; it ships GeoNames' towns of 1,000 people and more, each with the
name of its first-level region (:func:`geoscope.geo.places.named_towns`). Each town's Voronoi cell (in
longitude and latitude) is the land nearer to it than to any other town of its country; the cells of one
region, dissolved, approximate that region, and clipped to the Natural Earth outline of the country
(:func:`geoscope.geo.regions.country_region`) they stay on land. The borders are therefore approximate:
they run halfway between the last towns on either side, not along the surveyed line (a few km off where
towns are dense, tens of km where they are sparse, as in the Canadian north). Names are written in the
region's own spelling (:func:`geoscope.geo.places.own_spelling`: "Sisačko-moslavačka").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import shapely
from shapely.geometry.base import BaseGeometry

from .places import named_towns, own_spelling
from .regions import country_region

EXTENT_DEGREES = 1.0
"""The Voronoi diagram reaches this far beyond the country's bounding box, so that every cell is closed."""


@dataclass(frozen=True)
class FirstLevel:
    """A country's first-level regions, approximated from its towns (see the module's note)."""

    country: str
    """ISO 3166-1 alpha-2 code."""
    names: list[str]
    """Each region's name, in its own spelling."""
    areas: list[BaseGeometry]
    """Each region's (multi)polygon in lon/lat, clipped to the country's outline."""
    borders: BaseGeometry
    """The lines between regions (lon/lat), inside the country only: its coast and its outer border are the
    country outline's, not repeated here. Empty for a country of one region."""
    towns: int
    """How many towns the regions were drawn from."""


def first_level(country: str) -> FirstLevel:
    """The first-level regions of ``country`` (ISO code or name, as :func:`~geoscope.geo.regions.country_region`
    reads it; :class:`~geoscope.geo.regions.RegionError` when unknown), approximated from its towns."""
    outline = country_region(country)
    code = outline.country or country
    towns = named_towns()
    towns = towns[(towns["cc"] == code) & (towns["admin1"] != "")].drop_duplicates(["lat", "lon"])
    codes, names = pd.factorize(towns["admin1"])
    spelled = [own_spelling(code, str(name)) for name in names]
    if len(names) < 2:  # one region (or none known): the country itself, no border inside it
        return FirstLevel(code, spelled, [outline.geometry] * len(names), shapely.MultiLineString(), len(towns))
    points = shapely.multipoints(shapely.points(towns["lon"].to_numpy(), towns["lat"].to_numpy()))
    min_lon, min_lat, max_lon, max_lat = outline.geometry.bounds
    extent = shapely.box(min_lon - EXTENT_DEGREES, min_lat - EXTENT_DEGREES, max_lon + EXTENT_DEGREES,
                         max_lat + EXTENT_DEGREES)
    cells = np.asarray(shapely.get_parts(shapely.voronoi_polygons(points, extend_to=extent, ordered=True)))
    dissolved = np.array([shapely.union_all(cells[codes == i]) for i in range(len(names))], dtype=object)
    lines = shapely.union_all(shapely.boundary(dissolved))  # each shared edge once
    parts = shapely.get_parts(shapely.intersection(lines, outline.geometry))
    parts = shapely.get_parts(parts[np.isin(shapely.get_type_id(parts), (1, 5))])  # lines only (a touch: a point)
    borders = shapely.line_merge(shapely.multilinestrings(parts)) if len(parts) else shapely.MultiLineString()
    areas = shapely.intersection(dissolved, outline.geometry)
    return FirstLevel(code, spelled, list(areas), borders, len(towns))
