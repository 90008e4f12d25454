"""Any model by name: a trained bundle folder, or a CLIP checkpoint used zero-shot.

The one place that decides what ``--model`` means for predict, evaluate and serve: a bundle's stages
composed into a :class:`~geoscope.predict.GeoModel`, or a zero-shot head composed into one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .bundle import BundleFiles
from .errors import GeoscopeError
from .geo.candidates import MAX_CITIES, MIN_POPULATION, PROMPT
from .geo.regions import Region
from .models.heads.zero_shot import ZeroShotHead
from .predict import GeoModel, load_model


def is_zero_shot(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` names a CLIP checkpoint: ``hf:<repo-or-folder>``, or a folder whose
    ``config.json`` says ``"model_type": "clip"`` (a trained bundle's says ``geoscope-bundle``)."""
    text = str(spec).strip()
    if text.startswith("hf:"):
        return True
    try:
        config = json.loads((Path(text).expanduser() / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "clip"


def load_any_model(spec: str | os.PathLike[str] | None = None, region: Region | str | None = None) -> GeoModel:
    """A trained bundle (the bundled default when ``spec`` is None) as a :class:`GeoModel`, or a CLIP
    checkpoint (``hf:`` name or local folder) as a zero-shot :class:`GeoModel` over the places of ``region``
    (default: the world; :func:`zero_shot_model`). ``region`` is refused for a trained bundle."""
    if spec is not None and is_zero_shot(spec):
        return zero_shot_model(spec, region)
    if region is not None:
        raise GeoscopeError("--region chooses the places of a zero-shot model (an hf: name or a CLIP folder); "
                            "a trained bundle answers over the places it was trained on")
    return load_model(spec)


def zero_shot_model(checkpoint: str | os.PathLike[str], region: Region | str | None = None, *,
                    min_population: int = MIN_POPULATION, max_cities: int = MAX_CITIES, template: str = PROMPT,
                    progress: bool = True) -> GeoModel:
    """A CLIP checkpoint over the gazetteer's places of ``region``, answering like a trained bundle: a
    :class:`GeoModel` composed of the checkpoint's vision tower as its image side and a
    :class:`~geoscope.models.heads.zero_shot.ZeroShotHead` (see there for the options) as its head; it has no
    gallery, coverage, calibration or refiners."""
    head = ZeroShotHead.create(checkpoint, region, min_population=min_population, max_cities=max_cities,
                               template=template, progress=progress)
    config = {"name": head.name, "image_encoder": head.image_side.to_dict(),
              "labels": {"kind": "cities", "radius_km": None}, "model": head.to_dict()}
    return GeoModel(BundleFiles(config, {}, head.labels, [], head.folder), head)
