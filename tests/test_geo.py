"""geo: distances, GeoScore and metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geoscope.geo.sphere import (
    EARTH_RADIUS_KM,
    THRESHOLDS_KM,
    bounding_box,
    from_unit_vectors,
    geoscore,
    haversine_km,
    offset_km,
    pairwise_haversine_km,
    spherical_mean,
    summarize_errors,
    to_unit_vectors,
    validate_coordinates,
)

LONDON = (51.5074, -0.1278)
PARIS = (48.8566, 2.3522)
HALF_CIRCUMFERENCE_KM = math.pi * EARTH_RADIUS_KM  # 20,015.1 km


def test_london_paris_is_343_5_km() -> None:
    assert haversine_km(*LONDON, *PARIS) == pytest.approx(343.5, abs=0.2)
    assert haversine_km(*PARIS, *LONDON) == pytest.approx(haversine_km(*LONDON, *PARIS))


def test_zero_distance_and_one_degree() -> None:
    assert haversine_km(*LONDON, *LONDON) == 0.0
    assert haversine_km(0, 0, 1, 0) == pytest.approx(HALF_CIRCUMFERENCE_KM / 180)  # 111.195 km
    assert haversine_km(60, 0, 60, 1) == pytest.approx(HALF_CIRCUMFERENCE_KM / 180 / 2, rel=1e-4)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((0, 0), (0, 180)),
        ((90, 0), (-90, 0)),
        ((51.5, -0.13), (-51.5, 179.87)),
        ((10, 170), (-10, -10)),
    ],
)
def test_antipodes_are_half_the_circumference(a: tuple, b: tuple) -> None:
    assert haversine_km(*a, *b) == pytest.approx(HALF_CIRCUMFERENCE_KM)


def test_across_the_antimeridian() -> None:
    assert haversine_km(0, 179.5, 0, -179.5) == pytest.approx(HALF_CIRCUMFERENCE_KM / 180)


def test_haversine_broadcasts_like_numpy() -> None:
    lat1 = np.array([[0.0], [10.0], [20.0]])  # (3, 1)
    lon1 = np.zeros((3, 1))
    lat2 = np.array([0.0, 1.0, 2.0, 3.0])  # (4,)
    d = haversine_km(lat1, lon1, lat2, np.zeros(4))
    assert d.shape == (3, 4)
    assert d[0, 1] == pytest.approx(HALF_CIRCUMFERENCE_KM / 180)
    assert np.asarray(haversine_km(0, 0, 0, 0)).shape == ()


def test_pairwise_matches_elementwise() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-80, 80, (5, 2)), rng.uniform(-80, 80, (7, 2))
    m = pairwise_haversine_km(a[:, 0], a[:, 1], b[:, 0], b[:, 1])
    assert m.shape == (5, 7)
    assert m[3, 4] == pytest.approx(haversine_km(*a[3], *b[4]))


def test_geoscore_values_and_shape() -> None:
    assert geoscore(0.0) == pytest.approx(5000.0)
    assert geoscore(1492.7) == pytest.approx(5000.0 / math.e)
    assert geoscore(2 * 1492.7) == pytest.approx(5000.0 / math.e**2)
    scores = geoscore(np.array([[0.0, 100.0], [1000.0, 20000.0]]))
    assert scores.shape == (2, 2)
    assert np.all(np.diff(scores.ravel()) < 0)


def test_summarize_errors_thresholds_are_inclusive() -> None:
    d = np.array([0.5, 1.0, 25.0, 200.0, 750.0, 2500.0, 3000.0, 10.0])
    m = summarize_errors(d)
    assert m.n == 8
    assert m.mean_km == pytest.approx(d.mean())
    assert m.median_km == pytest.approx(112.5)  # (25 + 200) / 2
    assert m.geoscore == pytest.approx(geoscore(d).mean())
    assert list(m.within_km) == [f"{t:g}" for t in THRESHOLDS_KM]
    assert list(m.within_km) == ["1", "25", "200", "750", "2500"]
    expected = {"1": 2 / 8, "25": 4 / 8, "200": 5 / 8, "750": 6 / 8, "2500": 7 / 8}
    assert m.within_km == pytest.approx(expected)
    assert m.to_dict()["within_km"]["1"] == 0.25


def test_summarize_no_errors_is_nan() -> None:
    m = summarize_errors([])
    assert m.n == 0 and math.isnan(m.median_km) and all(math.isnan(v) for v in m.within_km.values())


def test_unit_vectors_round_trip() -> None:
    lat, lon = np.array([0.0, 45.0, -89.0, 51.5]), np.array([0.0, 90.0, -179.0, -0.1])
    v = to_unit_vectors(lat, lon)
    assert v.shape == (4, 3)
    assert np.linalg.norm(v, axis=1) == pytest.approx(np.ones(4))
    back_lat, back_lon = from_unit_vectors(v * 3.0)  # need not be normalised
    assert back_lat == pytest.approx(lat) and back_lon == pytest.approx(lon)


def test_spherical_mean_across_antimeridian_and_weights() -> None:
    lat, lon = spherical_mean([10, -10], [179, -179])
    assert lat == pytest.approx(0, abs=1e-9) and abs(lon) == pytest.approx(180)
    lat, lon = spherical_mean([0, 0], [0, 10], weights=[1, 0])
    assert (lat, lon) == pytest.approx((0, 0), abs=1e-9)


def test_validate_coordinates_mask() -> None:
    mask = validate_coordinates([0, 90, -90.01, np.nan, 10, 10], [0, 180, 0, 0, -180.5, np.inf])
    assert mask.tolist() == [True, True, False, False, False, False]


def test_bounding_box() -> None:
    assert bounding_box([1, -2, 3], [10, 20, -30]) == (-2.0, -30.0, 3.0, 20.0)


def test_offset_km_moves_by_the_offset() -> None:
    lat, lon = offset_km(51.5, -0.1, np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    assert haversine_km(51.5, -0.1, lat, lon) == pytest.approx([1.0, 1.0], rel=1e-4)
    assert offset_km(0.0, 179.999, 0.0, 1.0)[1] < -179  # wraps across the antimeridian
