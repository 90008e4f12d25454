"""Retrieval refinement (after PIGEON): a guessed place moved to where its most similar training images are.

A label stands for its medoid, so a right label still errs by up to the label's spread.
Refinement searches the bundle's kNN gallery among the training images of that label only:
of the ``k`` most similar, the one with the most similar company within ``support_km``
(the kNN vote of :func:`geoscope.knn.knn_locate`) gives the coordinate.
"""

from __future__ import annotations

import numpy as np

from .errors import GeoscopeError
from .knn import KNN_K, KNN_SUPPORT_KM, knn_locate

REFINERS = ("none", "knn")


def check_refiner(name: str) -> str:
    """``name`` if it is a known refiner, else one clear error."""
    if name not in REFINERS:
        raise GeoscopeError(f"refine must be one of {', '.join(REFINERS)} (got {name!r})")
    return name


def refine_in_labels(query: np.ndarray, labels: np.ndarray, unit_gallery: np.ndarray, gallery_lat: np.ndarray,
                     gallery_lon: np.ndarray, gallery_label: np.ndarray, label_lat: np.ndarray,
                     label_lon: np.ndarray, k: int = KNN_K,
                     support_km: float = KNN_SUPPORT_KM) -> tuple[np.ndarray, np.ndarray]:
    """Refined coordinates for each (query row, guessed label) pair.

    ``query`` ``(n, d)`` are gallery-space features (``unit_gallery``'s rows are unit vectors),
    ``labels`` ``(n, m)`` the labels guessed for each; returns ``(n, m)`` latitudes and
    longitudes. A label without gallery images keeps its own coordinate.
    """
    labels = np.atleast_2d(labels)
    lat = label_lat[labels].astype(np.float64)
    lon = label_lon[labels].astype(np.float64)
    for label in np.unique(labels):
        members = np.flatnonzero(gallery_label == label)
        if members.size == 0:
            continue
        rows, cols = np.nonzero(labels == label)
        found = knn_locate(query[rows], unit_gallery[members], gallery_lat[members], gallery_lon[members],
                           k=k, support_km=support_km)
        lat[rows, cols], lon[rows, cols] = found
    return lat, lon
