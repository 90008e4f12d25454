"""geoscope: tell where a street-level photo was taken from its pixels alone."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .predict import GeoModel

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(model_dir: str | os.PathLike[str] | None = None) -> GeoModel:
    """Load a model bundle for prediction (the bundled default when ``model_dir`` is None).

    Returns a :class:`geoscope.predict.GeoModel`: ``model.predict(["photo.jpg"], top_k=3)``.
    """
    from .predict import load_model

    return load_model(model_dir)
