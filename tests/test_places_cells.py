"""The offline gazetteer (places) and the partitions built on it (cells)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from geoscope.errors import GeoscopeError
from geoscope.geo.cells import assign_grid, assign_nearest, grid_cells
from geoscope.geo.places import (
    PLACE_COLUMNS,
    cities_table,
    load_places,
    merge_suburbs,
    nearest_place,
    top_cities,
    top_places,
)
from geoscope.geo.regions import bbox_region, resolve_region
from geoscope.geo.sphere import haversine_km

LONDON_BOROUGHS = {"Brent", "Islington", "City of Westminster", "Croydon", "Barking", "Ilford",
                   "Harrow", "Tottenham", "Walthamstow", "Romford", "Southall", "Putney"}


def test_load_places_of_a_country() -> None:
    places = load_places("GB")
    assert list(places.columns) == list(PLACE_COLUMNS)
    assert len(places) > 500
    assert (places["country_code"] == "GB").all() and (places["population"] >= 15000).all()
    assert places["population"].is_monotonic_decreasing
    assert places["name"].iloc[0] == "London"
    assert set(places["admin1"]) >= {"ENG", "SCT", "WLS", "NIR"}


def test_load_places_in_a_box_and_smaller_places() -> None:
    box = bbox_region((51.3, -0.5, 51.7, 0.3))
    big = load_places(box)
    small = load_places(box, min_population=1000)
    assert len(small) > len(big) > 10
    assert box.contains(small["lat"], small["lon"]).all()
    with pytest.raises(GeoscopeError):
        load_places(box, min_population=10)


def test_nearest_place() -> None:
    places = load_places("GB")
    index, distance = nearest_place([51.51, 53.48], [-0.13, -2.24], places)
    assert places["name"].iloc[index[0]] in {"London", "City of Westminster"}
    assert places["name"].iloc[index[1]] == "Manchester"
    assert (distance < 3).all()
    expected = haversine_km(51.51, -0.13, places["lat"].iloc[index[0]], places["lon"].iloc[index[0]])
    assert distance[0] == pytest.approx(expected)


def test_merge_suburbs_folds_boroughs_into_london() -> None:
    merged = merge_suburbs(top_places("GB", 150))
    city = dict(zip(merged["name"], merged["city"], strict=True))
    for borough in LONDON_BOROUGHS:
        assert city[borough] == "London", borough
    assert city["Salford"] == "Manchester"
    assert city["Gateshead"] == "Newcastle upon Tyne"
    assert city["Derry"] == "Londonderry County Borough"  # one place under two names
    for own in ("Birmingham", "Leeds", "Bradford", "Liverpool", "Cardiff", "Oxford", "Brighton"):
        assert city[own] == own


def test_top_cities_reproduces_the_seed_label_count() -> None:
    table = top_cities("GB", 150, merge_suburbs=True)
    assert len(table) == 104  # the seed went from 150 places to 102 labels
    assert len(top_cities("GB", 150)) == 150
    london = table[table["name"] == "London"].iloc[0]
    assert london["n_members"] > 20 and london["merged_population"] > london["population"]
    assert table["n_members"].sum() == 150
    assert table["city_id"].is_unique


def test_cities_table_of_plain_places() -> None:
    places = top_places("GB", 5)
    table = cities_table(places)
    assert list(table["name"]) == list(places["name"])
    assert (table["n_members"] == 1).all()


@pytest.fixture(scope="module")
def london_grid() -> pd.DataFrame:
    return grid_cells(bbox_region((51.2, -0.6, 51.8, 0.4)), 10)


def test_grid_cells_of_a_box(london_grid: pd.DataFrame) -> None:
    grid = london_grid
    assert list(grid["cell_id"]) == list(range(len(grid)))
    assert 40 <= len(grid) <= 80
    heights = (grid["max_lat"] - grid["min_lat"]) * 111.195
    widths = (grid["max_lon"] - grid["min_lon"]) * 111.195 * np.cos(np.radians(grid["lat"]))
    assert np.allclose(heights, 10, rtol=0.01) and np.allclose(widths, 10, rtol=0.05)
    centre = grid.iloc[assign_grid([51.507], [-0.128], grid)[0]]
    assert centre["name"] == "London" and centre["population"] > 5_000_000
    assert ((grid["lat"] >= grid["min_lat"]) & (grid["lat"] <= grid["max_lat"])).all()


def test_assign_grid_round_trips_through_csv(london_grid: pd.DataFrame) -> None:
    again = pd.read_csv(io.StringIO(london_grid.to_csv(index=False)))
    rng = np.random.default_rng(1)
    lat, lon = rng.uniform(51.2, 51.8, 500), rng.uniform(-0.6, 0.4, 500)
    ids = assign_grid(lat, lon, again)
    assert (ids == assign_grid(lat, lon, london_grid)).all()
    assert (ids >= 0).all()
    cells = again.set_index("cell_id").loc[ids]
    assert ((lat >= cells["min_lat"].to_numpy()) & (lat < cells["max_lat"].to_numpy())).all()
    assert ((lon >= cells["min_lon"].to_numpy()) & (lon < cells["max_lon"].to_numpy())).all()
    outside = assign_grid([0.0, np.nan, 60.0], [0.0, 0.0, -0.1], again)
    assert outside.tolist() == [-1, -1, -1]


def test_grid_is_global_and_cells_keep_their_ids_across_regions() -> None:
    small = grid_cells(bbox_region((51.4, -0.2, 51.6, 0.0)), 10)
    large = grid_cells(bbox_region((51.2, -0.6, 51.8, 0.4)), 10)
    keys_small = set(zip(small["row"], small["col"], strict=True))
    keys_large = set(zip(large["row"], large["col"], strict=True))
    assert keys_small <= keys_large


def test_grid_of_open_sea_is_an_error() -> None:
    with pytest.raises(GeoscopeError, match="no 25 km grid cell touches land"):
        grid_cells(bbox_region((45.0, -30.0, 46.0, -29.0)), 25)


def test_grid_drops_cells_with_little_land() -> None:
    region = resolve_region("51.0,-1.0,52.0,1.5")
    everything = grid_cells(region, 25)
    mostly_land = grid_cells(region, 25, min_land_fraction=0.5)
    assert len(mostly_land) < len(everything)
    assert (mostly_land["land_fraction"] >= 0.5).all()


def test_assign_nearest_with_a_radius() -> None:
    cities = top_cities("GB", 10)
    ids = assign_nearest([51.5, 53.48, 57.0], [-0.12, -2.24, -5.0], cities, radius_km=30)
    names = dict(zip(cities["city_id"], cities["name"], strict=True))
    assert names[ids[0]] == "London" and names[ids[1]] == "Manchester"
    assert ids[2] == -1
    unlimited = assign_nearest([57.0, np.nan], [-5.0, 0.0], cities)
    assert unlimited[0] in names and unlimited[1] == -1
