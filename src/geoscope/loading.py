"""Any model by name: a trained bundle folder, or a CLIP checkpoint used zero-shot.

The one place that decides what ``--model`` means for predict, evaluate and serve.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import GeoscopeError
from .geo.regions import Region
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
    checkpoint (``hf:`` name or local folder) as a :class:`~geoscope.models.zero_shot.ZeroShotModel` over the
    places of ``region`` (default: the world). ``region`` is refused for a trained bundle."""
    if spec is not None and is_zero_shot(spec):
        from .models.zero_shot import ZeroShotModel

        return ZeroShotModel(spec, region)
    if region is not None:
        raise GeoscopeError("--region chooses the places of a zero-shot model (an hf: name or a CLIP folder); "
                            "a trained bundle answers over the places it was trained on")
    return load_model(spec)
