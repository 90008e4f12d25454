"""Great-circle geometry and the field's standard geolocation metrics.

Everything is vectorised over numpy arrays of degrees; distances are in kilometres.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius (IUGG), the value haversine metrics in the literature use."""

THRESHOLDS_KM: tuple[float, ...] = (1.0, 25.0, 200.0, 750.0, 2500.0)
"""Street, city, region, country, continent: the accuracy thresholds of Im2GPS onwards."""

GEOSCORE_SCALE_KM = 1492.7
"""GeoGuessr's score decay: 5000 points at 0 km, 5000/e at 1492.7 km."""


def haversine_km(lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike) -> NDArray:
    """Great-circle distance in km between points given in degrees; broadcasts like numpy."""
    p1, l1, p2, l2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (lat1, lon1, lat2, lon2))
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def pairwise_haversine_km(
    lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike
) -> NDArray:
    """Matrix of distances in km from every point of set 1 (rows) to every point of set 2."""
    rows = (np.asarray(a, dtype=np.float64)[:, None] for a in (lat1, lon1))
    cols = (np.asarray(a, dtype=np.float64)[None, :] for a in (lat2, lon2))
    return haversine_km(*rows, *cols)


def to_unit_vectors(lat: ArrayLike, lon: ArrayLike) -> NDArray:
    """Points in degrees as unit vectors on the sphere, shape ``(n, 3)``."""
    phi = np.radians(np.asarray(lat, dtype=np.float64))
    lam = np.radians(np.asarray(lon, dtype=np.float64))
    return np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=-1)


def from_unit_vectors(xyz: ArrayLike) -> tuple[NDArray, NDArray]:
    """Inverse of :func:`to_unit_vectors` (vectors need not be normalised)."""
    v = np.asarray(xyz, dtype=np.float64)
    lat = np.degrees(np.arctan2(v[..., 2], np.hypot(v[..., 0], v[..., 1])))
    lon = np.degrees(np.arctan2(v[..., 1], v[..., 0]))
    return lat, lon


def spherical_mean(
    lat: ArrayLike, lon: ArrayLike, weights: ArrayLike | None = None
) -> tuple[float, float]:
    """Weighted centre of points on the sphere (correct across the antimeridian)."""
    v = to_unit_vectors(lat, lon)
    w = np.ones(len(v)) if weights is None else np.asarray(weights, dtype=np.float64)
    mlat, mlon = from_unit_vectors((v * w[:, None]).sum(axis=0))
    return float(mlat), float(mlon)


def geoscore(distance_km: ArrayLike) -> NDArray:
    """GeoGuessr points for each distance: ``5000·exp(−d/1492.7)``."""
    return 5000.0 * np.exp(-np.asarray(distance_km, dtype=np.float64) / GEOSCORE_SCALE_KM)


@dataclass(frozen=True)
class GeoMetrics:
    """Summary of distance errors over a set of predictions."""

    n: int
    mean_km: float
    median_km: float
    geoscore: float
    within_km: dict[str, float]
    """Share of predictions within each threshold, keyed ``"1"``, ``"25"``, … (fractions 0–1)."""

    def to_dict(self) -> dict:
        return asdict(self)


def summarize_errors(
    distance_km: ArrayLike, thresholds: tuple[float, ...] = THRESHOLDS_KM
) -> GeoMetrics:
    """Mean, median, GeoScore and accuracy within each threshold of the given errors."""
    d = np.asarray(distance_km, dtype=np.float64)
    if d.size == 0:
        nan = float("nan")
        return GeoMetrics(0, nan, nan, nan, {f"{t:g}": nan for t in thresholds})
    return GeoMetrics(
        n=int(d.size),
        mean_km=float(d.mean()),
        median_km=float(np.median(d)),
        geoscore=float(geoscore(d).mean()),
        within_km={f"{t:g}": float((d <= t).mean()) for t in thresholds},
    )


def validate_coordinates(lat: ArrayLike, lon: ArrayLike) -> NDArray:
    """Boolean mask of rows whose lat is in [−90, 90] and lon in [−180, 180], both finite."""
    la, lo = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    return np.isfinite(la) & np.isfinite(lo) & (np.abs(la) <= 90) & (np.abs(lo) <= 180)


def bounding_box(lat: ArrayLike, lon: ArrayLike) -> tuple[float, float, float, float]:
    """``(min_lat, min_lon, max_lat, max_lon)`` of the points."""
    la, lo = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    return float(la.min()), float(lo.min()), float(la.max()), float(lo.max())


def offset_km(
    lat: ArrayLike, lon: ArrayLike, north_km: ArrayLike, east_km: ArrayLike
) -> tuple[NDArray, NDArray]:
    """Move points by local north/east offsets in km (equirectangular, fine below ~100 km)."""
    la = np.asarray(lat, dtype=np.float64)
    dlat = np.degrees(np.asarray(north_km) / EARTH_RADIUS_KM)
    dlon = np.degrees(np.asarray(east_km) / (EARTH_RADIUS_KM * np.cos(np.radians(la))))
    return la + dlat, (np.asarray(lon, dtype=np.float64) + dlon + 180.0) % 360.0 - 180.0
