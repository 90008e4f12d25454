"""Plans: the seed's UK grid and top-N cities at its scale, reproducible, on land, via the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import drawn

from geoscope.cli import main as cli
from geoscope.data.plan import Plan, PlanError, cities_plan, grid_plan, read_plan, write_plan
from geoscope.geo.places import top_places
from geoscope.geo.regions import resolve_region
from geoscope.geo.sphere import haversine_km
from geoscope.report.maps import POINT, separate_areas


def run_cli(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    """The real ``geoscope`` entry point, limited to the ``data`` commands this issue owns."""
    monkeypatch.setattr(cli, "TOP_LEVEL", ())
    return cli.main(list(argv))


@pytest.fixture(scope="module")
def gb():
    return resolve_region("GB")


@pytest.fixture(scope="module")
def gb_grid(gb) -> Plan:
    return grid_plan(gb)  # the seed's defaults: 25 km cells, 20 points each


@pytest.fixture(scope="module")
def gb_cities(gb) -> Plan:
    return cities_plan(gb, merge=True)  # top 150, 5 km, 350 each


def test_gb_grid_at_the_seed_scale(gb, gb_grid: Plan) -> None:
    points, cells = gb_grid.points, gb_grid.table
    assert len(cells) == 511 and (cells["land_fraction"] >= 0.05).all()  # 56 cells of almost only sea left out
    assert len(points) == 511 * 20 == 10_220
    assert (points.groupby("cell_id").size() == 20).all()
    assert gb.contains(points["lat"], points["lon"]).all()
    joined = points.merge(cells, on="cell_id", suffixes=("", "_cell"))
    assert ((joined["lat"] >= joined["min_lat"]) & (joined["lat"] <= joined["max_lat"])).all()
    assert ((joined["lon"] >= joined["min_lon"]) & (joined["lon"] <= joined["max_lon"])).all()
    assert (joined["cell"] == joined["name"]).all()
    assert points["point_id"].is_unique
    assert gb_grid.meta["points"] == 10_220 and gb_grid.meta["cells"] == 511


def test_gb_top150_cities_with_suburbs_merged(gb, gb_cities: Plan) -> None:
    points, cities = gb_cities.points, gb_cities.table
    assert len(points) == 150 * 350 == 52_500
    assert len(cities) == 104
    assert points["city_id"].nunique() == 104 and points["place_id"].nunique() == 150
    assert set(points["city_id"]) == set(cities["city_id"])
    assert gb.contains(points["lat"], points["lon"]).all()
    centres = top_places(gb, 150).set_index("place_id")
    far = haversine_km(points["lat"], points["lon"], centres.loc[points["place_id"], "lat"].to_numpy(),
                       centres.loc[points["place_id"], "lon"].to_numpy())
    assert far.max() <= 5.0 + 1e-3  # coordinates are rounded to 6 decimals
    london = points[points["city"] == "London"]
    assert set(london["place"]) >= {"London", "Croydon", "Islington"}


def test_gb_top50_scale(gb) -> None:
    assert len(cities_plan(gb, top=50).points) == 17_500
    assert len(cities_plan(gb, top=50, per_city=600).points) == 30_000


def test_sampling_is_reproducible(gb) -> None:
    box = resolve_region("51.3,-0.5,51.7,0.3")
    a, b = grid_plan(box, 10, 5, seed=7), grid_plan(box, 10, 5, seed=7)
    pd.testing.assert_frame_equal(a.points, b.points)
    c = grid_plan(box, 10, 5, seed=8)
    assert not np.allclose(a.points["lat"], c.points["lat"])
    d, e = cities_plan(gb, top=3, per_city=10, seed=1), cities_plan(gb, top=3, per_city=10, seed=1)
    pd.testing.assert_frame_equal(d.points, e.points)


def test_points_avoid_the_sea() -> None:
    coast = resolve_region("50.5,-2.0,51.0,-1.0")  # the Solent and the Isle of Wight
    plan = grid_plan(coast, 10, 30, seed=0)
    assert coast.on_land(plan.points["lat"], plan.points["lon"]).all()
    plan = cities_plan(coast, top=3, radius_km=5, per_city=50)
    assert coast.on_land(plan.points["lat"], plan.points["lon"]).all()


def test_geojson_region_plan(tmp_path) -> None:
    poly = {"type": "Polygon", "coordinates": [[[-0.5, 51.3], [0.3, 51.3], [-0.1, 51.7], [-0.5, 51.3]]]}
    path = tmp_path / "triangle.geojson"
    path.write_text(json.dumps(poly))
    plan = grid_plan(str(path), 10, 4)
    assert resolve_region(str(path)).contains(plan.points["lat"], plan.points["lon"]).all()


@pytest.mark.parametrize("kwargs", [{"cell_km": 0}, {"per_cell": 0}, {"per_cell": 2.5}])
def test_bad_grid_arguments(kwargs) -> None:
    with pytest.raises(PlanError):
        grid_plan("51.3,-0.5,51.7,0.3", **{"cell_km": 10, "per_cell": 3, **kwargs})


def test_write_and_read_plan(tmp_path) -> None:
    plan = cities_plan("GB", top=4, per_city=5)
    path = write_plan(plan, tmp_path / "plan")
    assert path == tmp_path / "plan" / "points.csv"
    assert {p.name for p in (tmp_path / "plan").iterdir()} == {"points.csv", "cities.csv", "plan.json"}
    again = read_plan(tmp_path / "plan")
    assert list(again["point_id"]) == list(range(20))
    assert json.loads((tmp_path / "plan" / "plan.json").read_text())["kind"] == "cities"


def test_read_plan_without_ids_and_with_bad_rows(tmp_path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("lat,lon,name\n51.5,-0.1,a\n52.0,-1.0,b\n")
    assert list(read_plan(good)["point_id"]) == [0, 1]
    bad = tmp_path / "bad.csv"
    bad.write_text("point_id,lat,lon\n0,51.5,-0.1\n1,north,-1.0\n2,95,0\n2,50,0\n")
    with pytest.raises(PlanError) as info:
        read_plan(bad)
    message = str(info.value)
    assert "rows 3, 4" in message and "duplicate point_id at row 5" in message
    assert "\n" not in message
    (tmp_path / "nolat.csv").write_text("x,lon\n1,2\n")
    with pytest.raises(PlanError, match="missing column 'lat'"):
        read_plan(tmp_path / "nolat.csv")
    with pytest.raises(PlanError, match="plan not found"):
        read_plan(tmp_path / "nothing")


def test_cli_plan_grid_and_cities(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "grid"
    assert run_cli(monkeypatch, "data", "plan", "grid", "--region", "51.3,-0.5,51.7,0.3",
                   "--cell-km", "10", "--per-cell", "3", "-o", str(out)) == 0
    assert "points in" in capsys.readouterr().out
    points = pd.read_csv(out / "points.csv")
    assert list(points.columns) == ["point_id", "lat", "lon", "cell_id", "cell"]
    cells = pd.read_csv(out / "cells.csv")
    assert {"cell_id", "name", "lat", "lon", "population", "min_lat", "max_lon"} <= set(cells.columns)
    assert drawn(out / "map.png", POINT) > 100  # the plan drawn: its points over its cells

    out = tmp_path / "cities"
    assert run_cli(monkeypatch, "data", "plan", "cities", "--region", "GB", "--top", "20",
                   "--per-city", "2", "--merge-suburbs", "-o", str(out)) == 0
    assert "after merging suburbs" in capsys.readouterr().out
    points = pd.read_csv(out / "points.csv")
    assert {"lat", "lon", "city_id", "city", "place_id", "place"} <= set(points.columns)
    assert len(points) == 40
    assert drawn(out / "map.png", POINT) > 100


def test_areas_far_apart_are_drawn_apart() -> None:
    rng = np.random.default_rng(0)
    centres = {"London": (51.5, -0.1), "Croatia": (45.1, 15.2), "Slovenia": (46.1, 14.8), "Oregon": (44.0, -120.5)}
    lat = np.concatenate([c[0] + rng.normal(0, 0.3, 30) for c in centres.values()])
    lon = np.concatenate([c[1] + rng.normal(0, 0.3, 30) for c in centres.values()])
    weight = np.repeat([1.0, 0.0, 2.0, 0.5], 30)
    area, order = separate_areas(lat, lon, weight)
    london, croatia, slovenia, oregon = (area[i * 30:(i + 1) * 30] for i in range(4))
    assert all(len(set(group)) == 1 for group in (london, croatia, slovenia, oregon))
    assert croatia[0] == slovenia[0]  # neighbours: one panel
    assert len({london[0], croatia[0], oregon[0]}) == 3 and len(order) == 3
    assert order.tolist() == [croatia[0], london[0], oregon[0]]  # by weight: 60, 30, 15


def test_cli_unknown_region_is_one_line_exit_2(tmp_path, monkeypatch, capsys) -> None:
    code = run_cli(monkeypatch, "data", "plan", "cities", "--region", "Grmany", "-o", str(tmp_path / "x"))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("geoscope: error: unknown region 'Grmany'") and err.count("\n") == 1
    assert "Germany" in err and not (tmp_path / "x").exists()
