"""The GPS head (``--head gps``, GeoCLIP's design): each label is a point, read by its coordinates.

The coordinates go through a :class:`~geoscope.models.location.LocationEncoder` (from GeoCLIP's
weights and trained, kept frozen, or from scratch: ``location``), so that fine labels (a gallery
of points) share what they learn; no point learns an offset of its own. Its points can refine
another model's guesses (:class:`geoscope.answer.refine.PointRefiner`), and its answers merge points
closer than :data:`MERGE_KM`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .contrastive import ContrastiveHead

MERGE_KM = 5.0
"""A GPS head's answer merges gallery points closer than this to a more probable one."""

LOCATION_SAID = {
    "geoclip": "started from GeoCLIP's pretrained weights and trained",
    "geoclip-frozen": "GeoCLIP's pretrained weights, kept",
    "scratch": "trained from random weights",
}


class GPSHead(ContrastiveHead):
    """Image features against a location encoder's embeddings of the labels' coordinates."""

    kind = "gps"
    title = "GPS"
    places_from = "coordinates"
    offsets = False  # points share a smooth encoder
    refines = True
    merge_km = MERGE_KM

    @staticmethod
    def candidate_inputs(labels: pd.DataFrame, text_encoder: str) -> np.ndarray:
        return labels[["lat", "lon"]].to_numpy(dtype=np.float32, copy=True)

    @classmethod
    def places_said(cls, config: Mapping, labels: pd.DataFrame) -> str:
        location = config["model"]["place_clip"]["location"]
        return f"each label's coordinates through a location encoder (GeoCLIP's design; {LOCATION_SAID[location]})"
