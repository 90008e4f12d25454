"""geoscope: tell where a street-level photo was taken from its pixels alone."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .predict import GeoModel

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(model: str | os.PathLike[str] | None = None, *, region: str | None = None,
         runtime: str | None = None) -> GeoModel:
    """Load a model for prediction: a bundle folder (the bundled default when None), or a hub CLIP
    (``"hf:geolocal/StreetCLIP"``, or a local CLIP folder) used zero-shot over the places of ``region``.
    ``runtime`` runs its image encoder (``"openvino:bf16"``, ``"onnxruntime"``, …; ``None``: ``$GEOSCOPE_RUNTIME``,
    else ``auto``: see :mod:`geoscope.encoders.runtime`).

    Returns a :class:`geoscope.predict.GeoModel`: ``model.predict(["photo.jpg"], top_k=3)``. Where Linux gives every
    large allocation transparent huge pages, the calling process asks for ordinary ones from then on
    (:func:`geoscope.distributed.use_small_pages`: a call over many photos answers half again as fast); called
    before torch is imported, it also has torch's idle threads sleep soon
    (:func:`geoscope.distributed.idle_threads_sleep_soon`).
    """
    from .distributed import idle_threads_sleep_soon, use_small_pages

    idle_threads_sleep_soon()
    from .encoders.runtime import resolve_runtime
    from .loading import load_any_model

    use_small_pages()
    loaded = load_any_model(model, region=region)
    loaded.runtime = resolve_runtime(runtime)
    return loaded
