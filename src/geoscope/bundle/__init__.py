"""A trained model as a directory a person can open.

``config.json`` (one section per stage: image side, head, level expert, gallery, coverage,
calibration, refiner; labels, training summary, metrics), ``weights.safetensors`` (tensors only, no
pickles; each stage's under its own prefix), ``labels.csv`` (the place table), ``history.json``
(per-epoch training curves) and ``README.md`` (the model card). :mod:`.stages` assembles and
validates a bundle by its stages; :mod:`.files` reads and writes it.
"""

from .files import read_bundle, save_bundle
from .layout import (
    CARD,
    CONFIG,
    DEFAULT_BUNDLE,
    FORMAT,
    FORMAT_VERSION,
    HISTORY,
    LABELS,
    POINT_PLACE,
    TRAIN_SHA1,
    WEIGHTS,
    BundleFiles,
)
from .stages import Record, Stage, assemble, validate

__all__ = ["CARD", "CONFIG", "DEFAULT_BUNDLE", "FORMAT", "FORMAT_VERSION", "HISTORY", "LABELS", "POINT_PLACE",
           "TRAIN_SHA1", "WEIGHTS", "BundleFiles", "Record", "Stage", "assemble", "read_bundle", "save_bundle",
           "validate"]
