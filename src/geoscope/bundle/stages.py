"""A bundle by stages: each stage writes its own section of ``config.json`` and its own tensors; this module
assembles them into one bundle and validates a bundle by asking each stage's check in turn.

| section | stage | tensors |
|---|---|---|
| ``image_encoder`` | :class:`~geoscope.models.image_side.TrainedImageSide` | ``image_top.*`` |
| ``model`` | a head (:mod:`geoscope.models.heads`) | ``model.*``, ``place_embeddings`` |
| ``level_expert`` | :class:`~geoscope.models.level_expert.LevelExpert` | ``level_expert.*`` |
| ``gallery`` | :class:`~geoscope.bundle.gallery.Gallery` | ``gallery.*``, ``typicality.*`` |
| ``coverage``, ``calibration`` | :mod:`geoscope.answer` (read the gallery; none) | |
| ``refiner`` | :class:`~geoscope.bundle.refiner.PointsRefiner` | ``refiner.*`` |
| ``training`` | the training record | ``split.train_sha1`` |

The other sections (``name``, ``labels``, ``fusion``, ``answer``, ``metrics``, ``validation``: how the validation
items of each label fared, …) are plain values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from ..errors import GeoscopeError, ModelError, quote_name
from ..models.heads import head_class, head_kind
from .gallery import check_coverage, check_gallery
from .layout import CONFIG, LABEL_COLUMNS, LABELS, WEIGHTS, BundleFiles
from .refiner import check_refiner


@runtime_checkable
class Stage(Protocol):
    """A part of a model as a bundle stores it."""

    def to_dict(self) -> object:
        """Its section of ``config.json``."""
        ...

    def tensors(self) -> dict[str, np.ndarray]:
        """Its tensors, each under its own prefix."""
        ...


@dataclass
class Record:
    """A section that is a plain value, with tensors of its own (the training record's image hashes)."""

    value: object
    stored: dict[str, np.ndarray] = field(default_factory=dict)

    def to_dict(self) -> object:
        return self.value

    def tensors(self) -> dict[str, np.ndarray]:
        return self.stored


def assemble(stages: Mapping[str, Stage | object]) -> tuple[dict, dict[str, np.ndarray]]:
    """``config.json`` and the weights of a bundle from its stages, by section: each stage's ``to_dict`` under its
    section (a plain value as it is; ``None``: the stage is absent) and its tensors, no key written twice."""
    config: dict = {}
    tensors: dict[str, np.ndarray] = {}
    for section, stage in stages.items():
        if isinstance(stage, Stage):
            config[section] = stage.to_dict()
            for key, value in stage.tensors().items():
                if key in tensors:
                    raise ValueError(f"two stages store {key!r} (the second: {section!r})")
                tensors[key] = value
        else:
            config[section] = stage.to_dict() if hasattr(stage, "to_dict") else stage
    return config, tensors


Check = Callable[[dict, dict[str, np.ndarray], Path], "str | None"]


def check_head(config: dict, tensors: dict[str, np.ndarray], path: Path, labels: int) -> str | None:
    """The head's own check, found by the kind its section names."""
    section = config["model"]
    try:
        head = head_class(head_kind(section))
    except GeoscopeError as exc:
        return f"{quote_name(path / CONFIG)}: {exc}"
    problem = head.check(section, tensors, labels)
    return f"{quote_name(path)}: {problem}" if problem else None


STAGE_CHECKS: tuple[Check, ...] = (check_gallery, check_coverage, check_refiner)
"""The checks of the stages after the head, in turn."""


def validate(files: BundleFiles) -> None:
    """Refuse, in one line, a bundle whose parts disagree or hold impossible values.

    Checks the config's sections, the label table (``name``, ``lat``, ``lon``; at least one row;
    coordinates finite and in range), that every floating-point tensor is finite (no NaN, no inf),
    then each stage in turn: the head (one candidate per label), the kNN gallery, the coverage that
    reads it, the refiner.
    """
    _check_config(files.config, files.path / CONFIG)
    _check_labels(files.labels, files.path / LABELS)
    weights = files.path / WEIGHTS
    for key, tensor in files.tensors.items():
        _check_finite(key, tensor, weights)
    problems = (check_head(files.config, files.tensors, files.path, len(files.labels)),
                *(check(files.config, files.tensors, files.path) for check in STAGE_CHECKS))
    for problem in problems:
        if problem:
            raise ModelError(problem)


NUMBERS = {
    ("answer", "merge_km"): (0.0, math.inf),
    ("coverage", "threshold"): (0.0, 1.0),
    ("coverage", "kept"): (0.0, 1.0),
    ("coverage", "k"): (1.0, math.inf),
    ("refiner", "radius_km"): (1e-9, math.inf),
}
"""Numbers of ``config.json`` that change answers, and their ranges: anything else there is refused at load."""


def _check_config(config: dict, path: Path) -> None:
    for section in ("model", "image_encoder", "labels"):
        if not isinstance(config.get(section), dict):
            raise ModelError(f"{quote_name(path)}: no {section!r} section (incomplete or foreign bundle)")
    for (section, key), (low, high) in NUMBERS.items():
        part = config.get(section)
        if isinstance(part, dict) and key in part and not _is_number(part[key], low, high):
            raise ModelError(f"{quote_name(path)}: {section}.{key} must be a number in [{low:g}, {high:g}], "
                             f"not {part[key]!r}")
    for quantile in ("gallery", "typicality"):
        values = ((config.get("coverage") or {}).get("quantiles") or {}).get(quantile, [])
        if not isinstance(values, list) or not all(_is_number(v, -math.inf, math.inf) for v in values):
            raise ModelError(f"{quote_name(path)}: coverage.quantiles.{quantile} must be a list of finite numbers")
    for distance, pair in (config.get("calibration") or {}).items():
        if not (isinstance(pair, list) and len(pair) == 2 and all(_is_number(v, -math.inf, math.inf) for v in pair)):
            raise ModelError(f"{quote_name(path)}: calibration.{distance} must be two finite numbers, not {pair!r}")
    centroid = config.get("training", {}).get("centroid") if isinstance(config.get("training"), dict) else None
    if centroid is not None and not _is_coordinate(centroid):
        raise ModelError(f"{quote_name(path)}: training centroid must be [lat, lon] in range, not {centroid!r}")


def _is_number(value: object, low: float, high: float) -> bool:
    """A finite int or float (not a bool) within ``[low, high]``."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
        and low <= value <= high


def _is_coordinate(value: object) -> bool:
    if not isinstance(value, list | tuple) or len(value) != 2:
        return False
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return False
    return abs(value[0]) <= 90 and abs(value[1]) <= 180


def _check_labels(labels: pd.DataFrame, path: Path) -> None:
    missing = [c for c in LABEL_COLUMNS if c not in labels]
    if missing:
        raise ModelError(f"{quote_name(path)}: missing column{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(map(repr, missing))} (found: {', '.join(map(str, labels.columns))})")
    if len(labels) == 0:
        raise ModelError(f"{quote_name(path)}: no rows, the model has no places")
    for column, limit in (("lat", 90.0), ("lon", 180.0)):
        values = pd.to_numeric(labels[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values) | (np.abs(np.nan_to_num(values)) > limit)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise ModelError(f"{quote_name(path)}: {column} missing, not a number or outside "
                             f"[-{limit:g}, {limit:g}] at {_rows(rows)} (e.g. {labels[column].iloc[rows[0]]!r})")
        labels[column] = values
    empty = labels["name"].isna().to_numpy()
    if empty.any():
        raise ModelError(f"{quote_name(path)}: empty place name at {_rows(np.flatnonzero(empty))}")


def _rows(rows: np.ndarray) -> str:
    """1-based CSV line numbers (the header is line 1), a few of them."""
    shown = ", ".join(str(i + 2) for i in rows[:5])
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


def _check_finite(key: str, tensor: np.ndarray, path: Path) -> None:
    if tensor.dtype.kind != "f" or np.isfinite(tensor).all():
        return
    nan, inf = int(np.isnan(tensor).sum()), int(np.isinf(tensor).sum())
    found = " and ".join(f"{n:,} {what}" for n, what in ((nan, "NaN"), (inf, "inf")) if n)
    raise ModelError(f"{quote_name(path)}: tensor {key!r} holds {found} value{'s' if nan + inf > 1 else ''}: "
                     "corrupt or diverged weights")
