"""Regions: countries by code from the offline boundaries, boxes, GeoJSON polygons."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely

from geoscope.errors import GeoscopeError
from geoscope.geo.regions import (
    Region,
    bbox_region,
    country_names,
    country_outlines,
    region_from_points,
    resolve_region,
)

# (lat, lon): inside Great Britain or Northern Ireland, and outside it
UK_CITIES = [(51.5074, -0.1278), (53.4808, -2.2426), (55.9533, -3.1883), (54.5973, -5.9301),
             (51.4816, -3.1791), (57.1497, -2.0943)]
NOT_UK = [(48.8566, 2.3522), (53.3498, -6.2603), (54.15, -4.48), (49.2, -2.13), (52.0, 3.0)]
#          Paris             Dublin              Isle of Man    Jersey        North Sea


@pytest.mark.parametrize("spec", ["GB", "gb", "GBR", "UK", "United Kingdom"])
def test_country_by_code_or_name(spec: str) -> None:
    region = resolve_region(spec)
    assert region.country == "GB"
    assert region.name == "United Kingdom"
    min_lat, min_lon, max_lat, max_lon = region.bbox
    assert 49 < min_lat < 50.5 and 60 < max_lat < 61.5 and -14 < min_lon < -5 and 1 < max_lon < 2.5


def test_country_contains_its_cities_not_its_neighbours() -> None:
    region = resolve_region("GB")
    lat, lon = np.array(UK_CITIES).T
    assert region.contains(lat, lon).all()
    lat, lon = np.array(NOT_UK).T
    assert not region.contains(lat, lon).any()
    assert region.contains(51.5074, -0.1278).shape == ()


def test_unknown_code_is_one_clear_line_with_suggestions() -> None:
    with pytest.raises(GeoscopeError) as info:
        resolve_region("Grmany")
    message = str(info.value)
    assert "unknown region 'Grmany'" in message and "DE (Germany)" in message
    assert "\n" not in message
    with pytest.raises(GeoscopeError, match=r"unknown region 'XX'.*ISO country code"):
        resolve_region("XX")


def test_countries_with_iso_quirks_resolve() -> None:
    # Natural Earth files France and Norway under -99 in ISO_A2; the _EH columns fix that.
    assert resolve_region("FR").contains(48.8566, 2.3522)
    assert resolve_region("NO").contains(59.9139, 10.7522)
    assert country_names()["DE"] == "Germany"


def test_bbox_region_and_its_land() -> None:
    region = resolve_region("51.0,-1.0,52.0,0.5")
    assert region.country is None and region.bbox == (51.0, -1.0, 52.0, 0.5)
    assert region.contains([51.5, 52.5], [0.0, 0.0]).tolist() == [True, False]
    # a box over the Channel: half sea, so its land is smaller than the box
    coast = bbox_region((50.0, -2.0, 51.0, 0.0))
    assert 0.2 < coast.land.area / coast.geometry.area < 0.8
    assert coast.on_land([50.9, 50.2], [-1.0, -1.0]).tolist() == [True, False]


@pytest.mark.parametrize("spec", ["52,0,51,1", "0,0,95,1", "1,2,3", "1,2,3,4,5,6"])
def test_bad_boxes(spec: str) -> None:
    with pytest.raises(GeoscopeError):
        resolve_region(spec)


def test_geojson_region(tmp_path) -> None:
    square = {"type": "Polygon", "coordinates": [[[-1, 51], [0, 51], [0, 52], [-1, 52], [-1, 51]]]}
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": square},
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [5, 5]}},
    ]}
    path = tmp_path / "area.geojson"
    path.write_text(json.dumps(doc))
    region = resolve_region(str(path))
    assert region.name == "area" and region.country is None
    assert region.bbox == (51.0, -1.0, 52.0, 0.0)
    assert region.contains([51.5, 51.5], [-0.5, 0.5]).tolist() == [True, False]


def test_bad_geojson_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(GeoscopeError, match="cannot read as GeoJSON"):
        resolve_region(str(tmp_path / "bad.geojson"))
    (tmp_path / "points.geojson").write_text(json.dumps({"type": "Point", "coordinates": [0, 0]}))
    with pytest.raises(GeoscopeError, match="no Polygon"):
        resolve_region(str(tmp_path / "points.geojson"))
    with pytest.raises(GeoscopeError, match="not found"):
        resolve_region(str(tmp_path / "missing.geojson"))


def test_country_outlines_clipped_to_a_box() -> None:
    everything = country_outlines()
    assert len(everything) > 200
    british_isles = country_outlines((49.0, -11.0, 61.0, 2.0))
    assert 2 <= len(british_isles) <= 8  # GB, IE, IM, the Channel Islands, a sliver of France
    for geom in british_isles:
        min_lon, min_lat, max_lon, max_lat = geom.bounds
        assert min_lat >= 49.0 - 1e-9 and max_lat <= 61.0 + 1e-9
        assert min_lon >= -11.0 - 1e-9 and max_lon <= 2.0 + 1e-9
    assert all(isinstance(g, shapely.Geometry) for g in british_isles)


def test_region_from_points_pads_the_data_extent() -> None:
    region = region_from_points([51.4, 51.6], [-0.2, 0.1], pad_km=10)
    assert isinstance(region, Region)
    min_lat, min_lon, max_lat, max_lon = region.bbox
    assert min_lat == pytest.approx(51.4 - 10 / 111.195) and max_lat == pytest.approx(51.6 + 10 / 111.195)
    assert min_lon < -0.2 - 0.14 and max_lon > 0.1 + 0.14
    with pytest.raises(GeoscopeError):
        region_from_points([np.nan], [np.nan])
