"""Refiners: a guessed label moved to a point inside it (PIGEON's second stage).

A label stands for its medoid, so a right label still errs by up to the label's spread. A
refiner reads the photo again and moves each guessed label to a point near it:

- ``knn`` (retrieval): among the training images of that label in the bundle's kNN gallery, the
  ``k`` most similar; the one with the most similar company within ``support_km`` (the kNN vote
  of :func:`geoscope.answer.knn.knn_locate`) gives the coordinate.
- ``gps`` (PIGEON's hybrid, GeoCLIP's gallery): a GPS head trained on the same images, stored in
  the bundle with its gallery of points already embedded; the point it finds most probable within
  ``radius_km`` of the label gives the coordinate.

Every refiner answers one call, :meth:`Refiner.coordinates`; a new one is a class here and a line
in :attr:`geoscope.predict.GeoModel.refiners`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np
import torch

from ..errors import GeoscopeError
from ..geo.sphere import EARTH_RADIUS_KM, to_unit_vectors
from ..models.fusion import group_mean, group_views
from .knn import KNN_K, KNN_SUPPORT_KM, knn_locate

if TYPE_CHECKING:
    from ..models.ensemble import Head

REFINERS = ("none", "knn", "gps")
REFINE_RADIUS_KM = 50.0
"""How far from its label the ``gps`` refiner looks for the likeliest point (measured: 25, 50, 100 km)."""
REFINE_HELP = ("move each place guess to a point inside it: knn, to its most similar training images; gps, to "
               "the likeliest point of the bundle's GPS head; none (default: the bundle's choice)")


def check_refiner(name: str) -> str:
    """``name`` if it is a known refiner, else one clear error."""
    if name not in REFINERS:
        raise GeoscopeError(f"refine must be one of {', '.join(REFINERS)} (got {name!r})")
    return name


class Refined(NamedTuple):
    """Where a refiner moved each guessed label: ``(P, m)`` arrays."""

    lat: np.ndarray
    lon: np.ndarray
    names: np.ndarray | None = None
    """``(place, region, country)`` of each refined point, when the refiner's points are named (``None`` in
    a cell: the label's own name stands)."""


class Refiner(Protocol):
    """Moves guessed labels to points near them, from the photo's image features."""

    def coordinates(self, features: np.ndarray, places: np.ndarray, labels: np.ndarray) -> Refined:
        """Where the labels ``(P, m)`` guessed for each place move to, from image features ``(n, dim)`` whose
        ``places`` (codes 0…P−1) say which place each image row shows."""
        ...


class GalleryRefiner:
    """``knn``: the training images most like the photo, among those of the guessed label."""

    def __init__(self, query: Callable[[np.ndarray], np.ndarray], unit_gallery: np.ndarray,
                 gallery_lat: np.ndarray, gallery_lon: np.ndarray, gallery_label: np.ndarray,
                 label_lat: np.ndarray, label_lon: np.ndarray) -> None:
        self.query = query
        """Image features → the gallery's space (:meth:`geoscope.predict.GeoModel.gallery_query`)."""
        self.gallery, self.gallery_lat, self.gallery_lon = unit_gallery, gallery_lat, gallery_lon
        self.gallery_label, self.label_lat, self.label_lon = gallery_label, label_lat, label_lon

    def coordinates(self, features: np.ndarray, places: np.ndarray, labels: np.ndarray) -> Refined:
        query = self.query(group_mean(np.asarray(features, dtype=np.float32), places))
        return Refined(*refine_in_labels(query, labels, self.gallery, self.gallery_lat, self.gallery_lon,
                                         self.gallery_label, self.label_lat, self.label_lon))


class PointRefiner:
    """``gps``: a GPS head's likeliest gallery point within ``radius_km`` of the guessed label, named as the
    GPS head names it (``point_names``: ``(place, region, country)`` per point, when known). Labels whose
    likeliest point is the same point are one guess of the answer (:mod:`geoscope.answer.answerer` merges
    guesses at one point), their probabilities summed."""

    def __init__(self, head: Head, points: np.ndarray, point_lat: np.ndarray, point_lon: np.ndarray,
                 label_lat: np.ndarray, label_lon: np.ndarray, radius_km: float = REFINE_RADIUS_KM,
                 point_names: Sequence[Sequence[str]] | None = None) -> None:
        self.head = head.eval()
        self.points = torch.as_tensor(np.asarray(points, dtype=np.float32))
        self.point_lat, self.point_lon = point_lat, point_lon
        self.point_names: np.ndarray | None = None
        """``(points,)`` object array of ``(place, region, country)`` tuples, when the points are named."""
        if point_names is not None:
            self.point_names = np.empty(len(point_names), dtype=object)
            self.point_names[:] = [tuple(n) for n in point_names]
        self.label_lat, self.label_lon = label_lat, label_lon
        near = to_unit_vectors(label_lat, label_lon) @ to_unit_vectors(point_lat, point_lon).T \
            >= np.cos(radius_km / EARTH_RADIUS_KM)
        self.candidates = np.full((len(near), max(1, int(near.sum(axis=1).max()))), -1, dtype=np.int64)
        """``(labels, width)``: the points each label may move to (−1 pads)."""
        for label, row in enumerate(near):
            points_near = np.flatnonzero(row)
            self.candidates[label, : len(points_near)] = points_near

    @torch.no_grad()
    def coordinates(self, features: np.ndarray, places: np.ndarray, labels: np.ndarray) -> Refined:
        views, headings = group_views(np.asarray(places), None)
        mask = views >= 0
        x = torch.as_tensor(np.asarray(features, dtype=np.float32)[views[mask]])
        embedded = self.head.embed_views(x, torch.as_tensor(mask), torch.as_tensor(headings, dtype=torch.float32))
        scores = (embedded @ self.points.T).numpy()  # the softmax keeps the order: dot products decide
        labels = np.atleast_2d(labels)
        candidates = self.candidates[labels]  # (places, m, width)
        near = np.where(candidates >= 0, scores[np.arange(len(labels))[:, None, None], candidates.clip(0)], -np.inf)
        point = np.take_along_axis(candidates, near.argmax(axis=2)[..., None], axis=2)[..., 0]
        inside = point >= 0
        lat = np.where(inside, self.point_lat[point], self.label_lat[labels]).astype(np.float64)
        lon = np.where(inside, self.point_lon[point], self.label_lon[labels]).astype(np.float64)
        names = None if self.point_names is None else np.where(inside, self.point_names[point.clip(0)], None)
        return Refined(lat, lon, names)


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
