"""The points refiner stage: another bundle's head over points (a GPS head), carried under ``refiner.``.

PIGEON's hybrid: a model answers with a label, and a head whose candidates are points (one that
:attr:`~geoscope.models.heads.base.TrainableHead.refines`), trained on the same images, moves each guess to
its likeliest point near the label (:class:`geoscope.answer.refine.PointRefiner`). The refiner is named
after that head's kind (``gps``). Its section of ``config.json`` (``refiner``) holds the head's own
``model`` section, its label scheme, its points' names and how far from a label it looks; its tensors
are the head's, under ``refiner.``, and its points' coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..answer.refine import REFINE_RADIUS_KM, PointRefiner
from ..errors import GeoscopeError, ModelError, quote_name
from ..models.heads import HEADS, REFINING, TrainableHead, head_from_dict, head_kind
from ..models.heads.contrastive import CANDIDATES
from .layout import POINT_PLACE, TRAIN_SHA1, WEIGHTS, BundleFiles

PREFIX = "refiner."
POINTS = (f"{PREFIX}{CANDIDATES}", f"{PREFIX}lat", f"{PREFIX}lon")
"""The points' embeddings and coordinates."""


def _heads_said() -> str:
    return " or ".join(HEADS[kind].title for kind in REFINING)


@dataclass
class PointsRefiner:
    """A head over points, their coordinates and names, and how far from a guessed label it may move it."""

    head: TrainableHead
    lat: np.ndarray
    lon: np.ndarray
    places: list[list[str]] | None = None
    """``[place, region, country]`` of each point (bundles written before naming: None)."""
    radius_km: float = REFINE_RADIUS_KM
    source: dict | None = None
    """What the refiner's own bundle said of itself: ``name``, ``labels``, ``metrics``."""
    train_sha1: np.ndarray | None = None
    """The refiner's training images' hashes (while attaching it to a model being trained)."""

    @property
    def name(self) -> str:
        """The refiner's name (``--refine``): its head's kind."""
        return self.head.kind

    @classmethod
    def from_bundle(cls, files: BundleFiles, image_encoder: dict) -> PointsRefiner:
        """The bundle ``files`` (named as ``--refiner``) as a refiner for a model whose image side is
        ``image_encoder``, or one clear error: it must be a head over points that reads the same features."""
        name = quote_name(files.path)
        kind = head_kind(files.config["model"])
        if kind not in REFINING:
            raise GeoscopeError(f"{name}: a refiner is a {_heads_said()} head's bundle "
                                f"(geoscope train --head {'|'.join(REFINING)}), not this model")
        title = HEADS[kind].title
        if files.config["image_encoder"] != image_encoder:
            raise GeoscopeError(f"{name}: its {title} head reads {files.config['image_encoder'].get('name')!r} "
                                f"features, this model {image_encoder.get('name')!r}: train both on one encoder")
        try:
            head = head_from_dict(files.config["model"], files.tensors)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelError(f"{name}: incompatible model bundle ({str(exc).splitlines()[0]})") from None
        labels = files.labels
        return cls(head, labels["lat"].to_numpy(dtype=np.float64), labels["lon"].to_numpy(dtype=np.float64),
                   labels[list(POINT_PLACE)].fillna("").astype(str).to_numpy().tolist(), REFINE_RADIUS_KM,
                   {"name": files.config.get("name"), "labels": files.config["labels"],
                    "metrics": files.config.get("metrics"), "path": str(files.path)},
                   files.tensors.get(TRAIN_SHA1, np.zeros((0, 20), dtype=np.uint8)))

    def check_trained_on(self, train_sha1: np.ndarray) -> None:
        """Refuse, in one line, a refiner trained on other images than the model's (hashes ``(n, 20)``)."""
        theirs = {bytes(row) for row in np.asarray(self.train_sha1, np.uint8)}
        ours = {bytes(row) for row in np.asarray(train_sha1, np.uint8)}
        if theirs != ours:
            name = quote_name((self.source or {}).get("path", self.name))
            raise GeoscopeError(f"{name}: its {self.head.title} head was trained on other images "
                                f"({len(theirs ^ ours):,} training images differ): train both on one manifest "
                                "and split")

    def to_dict(self) -> dict:
        source = self.source or {}
        return {"kind": self.name, "name": source.get("name"), "model": self.head.to_dict(),
                "labels": source.get("labels"), "points": len(self.lat), "radius_km": self.radius_km,
                "places": self.places, "metrics": source.get("metrics")}

    def tensors(self) -> dict[str, np.ndarray]:
        return self.head.tensors(PREFIX, candidates_dtype=np.float16) | {
            POINTS[1]: self.lat.astype(np.float64), POINTS[2]: self.lon.astype(np.float64)}

    @classmethod
    def from_dict(cls, section: Mapping, tensors: Mapping[str, np.ndarray]) -> PointsRefiner:
        """The refiner a bundle stores (raises ``KeyError``, ``TypeError``, ``ValueError`` or ``RuntimeError`` when
        its head does not fit)."""
        return cls(head_from_dict(section["model"], tensors, PREFIX), tensors[POINTS[1]], tensors[POINTS[2]],
                   section.get("places"), float(section.get("radius_km", REFINE_RADIUS_KM)),
                   {k: section.get(k) for k in ("name", "labels", "metrics")})

    def refiner(self, label_lat: np.ndarray, label_lon: np.ndarray) -> PointRefiner:
        """The refiner over a model's labels at these coordinates."""
        return PointRefiner(self.head, self.head.candidates().numpy(), self.lat, self.lon, label_lat, label_lon,
                            self.radius_km, self.places)


def _are_places(places: object, n: int) -> bool:
    return isinstance(places, list) and len(places) == n and all(
        isinstance(p, list) and len(p) == len(POINT_PLACE) and all(isinstance(v, str) for v in p) for p in places)


def check_refiner(config: dict, tensors: dict[str, np.ndarray], path: Path) -> str | None:
    """A refiner whose section names a head over points and whose points are whole and on Earth, or what is
    wrong."""
    refiner = config.get("refiner")
    if refiner is None:
        return None
    problem = None
    if not isinstance(refiner, dict) or refiner.get("kind") not in REFINING or \
            not isinstance(refiner.get("model"), dict):
        problem = (f"its 'refiner' must be a {_heads_said()} head's section "
                   f"(kind {' or '.join(map(repr, REFINING))}, with its 'model')")
    elif missing := [k for k in POINTS if k not in tensors]:
        problem = f"its {HEADS[refiner['kind']].title} refiner is incomplete ({WEIGHTS} has no " \
                  f"{', '.join(map(repr, missing))})"
    else:
        title = HEADS[refiner["kind"]].title
        points, lat, lon = (tensors[k] for k in POINTS)
        if points.ndim != 2 or lat.ndim != 1 or not len(lat) == len(lon) == points.shape[0]:
            problem = (f"the {title} refiner's points disagree in shape (embeddings {points.shape}, "
                       f"lat {lat.shape}, lon {lon.shape})")
        elif (np.abs(lat) > 90).any() or (np.abs(lon) > 180).any():
            problem = "refiner.lat or refiner.lon holds coordinates out of range"
        elif "places" in refiner and not _are_places(refiner["places"], len(lat)):
            problem = (f"the {title} refiner's 'places' must name each of its {len(lat):,} points "
                       f"as [{', '.join(POINT_PLACE)}]")
    return f"{quote_name(path)}: {problem}" if problem else None
