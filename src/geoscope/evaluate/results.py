"""What an evaluation produces: per-item predictions, baselines, metrics, training history.

``geoscope evaluate`` builds an :class:`EvaluationResult`; ``geoscope.report`` draws it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

MODEL = "model"
CENTROID = "centroid"
KNN = "knn"
VIEWS_AVERAGED = "views averaged"
"""A model with a learned view fusion, answering from the average of its single-view embeddings instead."""


@dataclass
class EvaluationResult:
    """The outcome of evaluating one model on one manifest.

    ``predictions`` has one row per evaluated item (an image, or a place when views are
    fused) with columns ``image`` (absolute path of the item's first image), ``lat``, ``lon``
    (truth), ``pred_lat``, ``pred_lon``, ``error_km``, ``probability`` (of the top guess),
    and where known ``true_label``, ``pred_label`` (label names) and ``split``.
    ``baselines`` maps a baseline's name (``"centroid"``, ``"knn"``) to a frame with the
    same index and columns ``pred_lat``, ``pred_lon``, ``error_km`` and where known
    ``pred_label``. ``metrics`` maps ``"model"`` and each baseline name to the dict of
    :meth:`geoscope.geo.sphere.GeoMetrics.to_dict`, plus ``label_accuracy`` where labels exist.
    ``history`` is the bundle's training history: one dict per epoch and split with keys
    ``epoch``, ``split``, ``loss``, ``accuracy``, ``mean_km``, ``median_km``.
    ``labels`` is the model's label table (``label``, ``name``, ``lat``, ``lon``) or None.
    Where the model knows them, ``predictions`` also has ``coverage_score``, ``in_coverage``,
    ``confidence_25``/``_200``/``_750`` (calibrated probability that the top guess is within
    that distance) and ``pred_country``. ``training_rows`` counts the manifest's rows left out
    because the model was trained on their images.
    """

    predictions: pd.DataFrame
    baselines: dict[str, pd.DataFrame]
    metrics: dict[str, dict]
    model_name: str
    dataset: str
    history: list[dict] = field(default_factory=list)
    labels: pd.DataFrame | None = None
    training_rows: int = 0
