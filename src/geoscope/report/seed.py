"""The seed project's published figures, shown beside ours for comparison.

The seed reported accuracy of the predicted cell or city and the mean error in km on its
own UK Street View collection, not on any dataset geoscope evaluates; the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass

SEED_DATASET = "seed's UK Street View set (a different dataset)"


@dataclass(frozen=True)
class PublishedFigure:
    """One row of the comparison table: a model's accuracy and errors on some dataset."""

    name: str
    dataset: str
    accuracy: float | None
    """Label (cell or city) accuracy as a fraction 0–1, or None when not reported."""
    mean_km: float | None
    median_km: float | None = None
    source: str = ""
    """Where the row comes from: ``"this evaluation"``, ``"seed"`` or the user's CSV path."""


SEED_FIGURES: tuple[PublishedFigure, ...] = (
    PublishedFigure("seed: UK grid cells", SEED_DATASET, 0.0228, 292.0, source="seed"),
    PublishedFigure("seed: top-150 cities", SEED_DATASET, 0.1434, 128.0, source="seed"),
    PublishedFigure("seed: top-50 cities", SEED_DATASET, 0.2708, 131.0, source="seed"),
)
