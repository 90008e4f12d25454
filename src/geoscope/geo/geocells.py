"""Semantic geocells (after PIGEON): cells that follow countries and regions and the density of the data.

Images are grouped by country and first-level region (from the offline gazetteer); a
region with fewer than ``min_images`` joins the nearest region of its country, and one with
more than ``max_images`` is cut into compact parts by k-means on the sphere, parts too small
joining their nearest neighbour. New points take the cell of the nearest cell medoid in their
own country (see :func:`geoscope.geo.labels.assign_labels`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from ..errors import GeoscopeError
from .naming import geographic_medoid, locate
from .sphere import haversine_km, to_unit_vectors

DEFAULT_MIN_IMAGES = 30
DEFAULT_MAX_IMAGES = 400


def geocell_ids(lat: ArrayLike, lon: ArrayLike, *, min_images: int = DEFAULT_MIN_IMAGES,
                max_images: int = DEFAULT_MAX_IMAGES, seed: int = 0) -> NDArray[np.int64]:
    """A geocell id (0…n−1) for every point."""
    if not 1 <= min_images <= max_images:
        raise GeoscopeError(f"geocells need 1 ≤ min images ≤ max images (got {min_images}, {max_images})")
    la, lo = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    where = locate(la, lo)
    regions = pd.factorize(where["country_code"] + "|" + where["region"])[0]
    countries = pd.factorize(where["country_code"])[0]
    ids = _merge_small(regions, countries, la, lo, min_images)
    parts = []
    for cell in np.unique(ids):
        rows = np.flatnonzero(ids == cell)
        parts.append((rows, _split_large(la[rows], lo[rows], min_images, max_images, seed)))
    out = np.empty(len(la), dtype=np.int64)
    offset = 0
    for rows, sub in parts:
        out[rows] = offset + sub
        offset += int(sub.max()) + 1
    return out


def _merge_small(groups: NDArray, countries: NDArray, lat: NDArray, lon: NDArray, min_images: int) -> NDArray:
    """Fold groups under ``min_images`` into the nearest group of the same country, smallest first."""
    groups = groups.copy()
    while True:
        sizes = pd.Series(groups).value_counts()
        small = [g for g in sizes.sort_values().index if sizes[g] < min_images]
        merged = False
        for g in small:
            rows = groups == g
            country = countries[np.flatnonzero(rows)[0]]
            others = list(np.unique(groups[(countries == country) & ~rows]))
            if not others:
                continue
            centre = geographic_medoid(lat[rows], lon[rows])
            medoids = np.array([geographic_medoid(lat[groups == o], lon[groups == o]) for o in others])
            target = others[int(np.argmin(haversine_km(*centre, medoids[:, 0], medoids[:, 1])))]
            groups[rows] = target
            merged = True
            break
        if not merged:
            return pd.factorize(groups)[0]


def _split_large(lat: NDArray, lon: NDArray, min_images: int, max_images: int, seed: int) -> NDArray:
    """Cut one group into ``ceil(n / max_images)`` compact parts; parts under ``min_images`` join a neighbour."""
    from sklearn.cluster import KMeans

    k = math.ceil(len(lat) / max_images)
    if k <= 1:
        return np.zeros(len(lat), dtype=np.int64)
    xyz = to_unit_vectors(lat, lon)
    model = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(xyz)
    ids, centres = model.labels_.copy(), model.cluster_centers_
    for part in np.argsort(np.bincount(ids, minlength=k)):
        if np.sum(ids == part) >= min_images or len(np.unique(ids)) == 1:
            continue
        others = [o for o in np.unique(ids) if o != part]
        nearest = others[int(np.argmax(centres[others] @ centres[part]))]
        ids[ids == part] = nearest
    return pd.factorize(ids)[0].astype(np.int64)
