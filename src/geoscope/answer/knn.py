"""The kNN baseline: locate an image at its most similar training images."""

from __future__ import annotations

import numpy as np

from ..geo.sphere import haversine_km

KNN_K = 10
KNN_SUPPORT_KM = 25.0


def knn_locate(
    query: np.ndarray, unit_gallery: np.ndarray, gallery_lat: np.ndarray, gallery_lon: np.ndarray,
    k: int = KNN_K, support_km: float = KNN_SUPPORT_KM,
) -> tuple[np.ndarray, np.ndarray]:
    """Locate each query at the neighbour with the most similar company nearby.

    ``unit_gallery`` rows are unit vectors (:func:`geoscope.answer.answerer.unit_rows`), normalised once by the caller.

    Of the ``k`` most cosine-similar gallery items, pick the one whose neighbours within
    ``support_km`` add up to the largest similarity (a vote that copes with several modes).
    """
    q = query / np.linalg.norm(query, axis=1, keepdims=True).clip(1e-12)
    g = unit_gallery
    k = min(k, len(g))
    out_lat, out_lon = np.empty(len(q)), np.empty(len(q))
    for start in range(0, len(q), 1024):
        sims = q[start : start + 1024] @ g.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        la, lo = gallery_lat[top], gallery_lon[top]
        close = haversine_km(la[:, :, None], lo[:, :, None], la[:, None, :], lo[:, None, :]) <= support_km
        support = (close * top_sims[:, None, :]).sum(axis=2)
        best = support.argmax(axis=1)
        rows = np.arange(len(top))
        out_lat[start : start + 1024], out_lon[start : start + 1024] = la[rows, best], lo[rows, best]
    return out_lat, out_lon


def nearest_places(query: np.ndarray, unit_gallery: np.ndarray, gallery_lat: np.ndarray, gallery_lon: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each query, its ``k`` most cosine-similar gallery items at distinct places (the best of the images
    taken at one spot stands for it): their rows ``(n, k)`` (−1 where fewer exist) and similarities."""
    q = query / np.linalg.norm(query, axis=1, keepdims=True).clip(1e-12)
    spot = np.unique(np.round(np.stack([gallery_lat, gallery_lon], axis=1), 3), axis=0, return_inverse=True)[1]
    wide = min(len(unit_gallery), 8 * k)  # enough images to find k places among them
    rows = np.full((len(q), k), -1, dtype=np.int64)
    similarity = np.full((len(q), k), np.nan)
    for start in range(0, len(q), 1024):
        sims = q[start : start + 1024] @ unit_gallery.T
        top = np.argpartition(-sims, wide - 1, axis=1)[:, :wide]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1), axis=1)
        for i, candidates in enumerate(top):
            firsts = candidates[np.unique(spot.ravel()[candidates], return_index=True)[1]]
            firsts = firsts[np.argsort(-sims[i, firsts])][:k]
            rows[start + i, : len(firsts)] = firsts
            similarity[start + i, : len(firsts)] = sims[i, firsts]
    return rows, similarity
