"""What a bundle is made of: its files, and the stage-independent parts of its layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

FORMAT = "geoscope-bundle"
FORMAT_VERSION = 1
CONFIG, WEIGHTS, LABELS, HISTORY, CARD = (
    "config.json", "weights.safetensors", "labels.csv", "history.json", "README.md",
)
DEFAULT_BUNDLE = Path(__file__).parent.parent / "assets" / "default-model"
LABEL_COLUMNS = ("name", "lat", "lon")
POINT_PLACE = ("place", "region", "country")
"""How a refiner's config names each of its points (``refiner.places``: one list per point)."""
TRAIN_SHA1 = "split.train_sha1"
"""The training images' content hashes ``(n, 20)`` uint8 (evaluate leaves these rows out)."""


@dataclass
class BundleFiles:
    """The contents of a model bundle, loaded into memory."""

    config: dict
    tensors: dict[str, np.ndarray]
    labels: pd.DataFrame
    history: list[dict]
    path: Path
