"""First-level regions approximated from GeoNames towns: Voronoi cells dissolved by region, clipped to the country."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from geoscope.geo.first_level import first_level
from geoscope.geo.places import named_towns, own_spelling
from geoscope.geo.regions import RegionError, country_region

CROATIAN_COUNTIES = 21


def _region_at(regions, lon: float, lat: float) -> str:
    hits = [name for name, area in zip(regions.names, regions.areas, strict=True)
            if shapely.intersects_xy(area, lon, lat)]
    assert len(hits) == 1, hits
    return hits[0]


def test_croatias_counties_are_named_in_their_own_spelling_and_hold_their_towns() -> None:
    regions = first_level("HR")
    assert regions.country == "HR" and len(regions.names) == CROATIAN_COUNTIES
    assert {"Virovitičko-podravska", "Grad Zagreb", "Splitsko-dalmatinska", "Međimurska"} <= set(regions.names)
    assert _region_at(regions, 15.978, 45.813) == "Grad Zagreb"  # the city centre
    assert _region_at(regions, 16.470, 43.520) == "Splitsko-dalmatinska"  # Split
    assert _region_at(regions, 18.094, 42.650) == "Dubrovačko-neretvanska"  # Dubrovnik
    # Every town lies in the region GeoNames files it under (its own cell is in it), where the outline has it.
    towns = named_towns()
    towns = towns[towns["cc"] == "HR"]
    outline = country_region("HR").geometry
    on_land = shapely.intersects_xy(outline, towns["lon"].to_numpy(), towns["lat"].to_numpy())
    held = [shapely.intersects_xy(regions.areas[regions.names.index(own_spelling("HR", a))], lon, lat)
            for lon, lat, a, land in zip(towns["lon"], towns["lat"], towns["admin1"], on_land, strict=True) if land]
    assert np.mean(held) > 0.97


def test_the_borders_run_inside_the_country_between_its_regions() -> None:
    regions = first_level("GB")
    assert sorted(regions.names) == ["England", "Northern Ireland", "Scotland", "Wales"]
    assert _region_at(regions, -3.19, 55.95) == "Scotland"  # Edinburgh
    assert _region_at(regions, -3.18, 51.48) == "Wales"  # Cardiff
    assert _region_at(regions, -5.93, 54.60) == "Northern Ireland"  # Belfast
    assert _region_at(regions, -0.13, 51.51) == "England"  # London
    outline = country_region("GB").geometry
    assert regions.borders.geom_type in ("LineString", "MultiLineString") and regions.borders.length > 5
    assert shapely.covers(shapely.buffer(outline, 1e-6), regions.borders)  # never out at sea
    assert not shapely.intersects(regions.borders, shapely.Point(-0.13, 51.51).buffer(1.0))  # none through London
    # The England–Scotland line crosses the Solway–Tweed neck, near the real border (about 55.0–55.8° N).
    neck = shapely.intersection(regions.borders, shapely.box(-3.5, 54.5, -1.8, 56.2))
    lats = shapely.get_coordinates(neck)[:, 1]
    assert len(lats) and lats.min() > 54.7 and lats.max() < 56.0


def test_a_country_of_one_region_has_no_border_and_an_unknown_one_is_refused() -> None:
    monaco = first_level("MC")
    assert len(monaco.names) == 1 and monaco.borders.is_empty
    with pytest.raises(RegionError, match="unknown region 'XX'"):
        first_level("XX")
