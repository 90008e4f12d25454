"""What to train on and how: the options of :func:`geoscope.training.fit.fit`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..geo.labels import LabelScheme
from ..models.image_side import ImageSide
from .loop import TrainConfig


@dataclass
class FitOptions:
    """What to train on and how."""

    scheme: LabelScheme
    image_encoder: str = "efficientnet-lite0"
    text_encoder: str = "minilm"
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: bool = True
    """Also train on horizontally flipped copies of each image."""
    finetune_blocks: int | str = 0
    """Fine-tune the image encoder's last N MBConv blocks (0: frozen encoder; "all": all of it, from pixels)."""
    crops: int = 1
    """Square crops along each image's long side, features averaged (for wide frames)."""
    search: bool = False
    restarts: int = 1
    """Train each configuration this many times, from seeds ``seed``, ``seed + 1``, …; the lowest validation
    loss is kept (a head on frozen features lands in minima that differ by several GeoScore points)."""
    refiner: str | os.PathLike[str] | None = None
    """A bundle of a head over points (a GPS head), trained on the same training images, stored as this model's
    refiner named after it (``gps``) and used by default (PIGEON's hybrid: this model's label, the GPS head's
    likeliest point near it; :mod:`geoscope.bundle.refiner`)."""
    level_expert: bool = True
    """Also fit a linear probe over the coarsest level of the label hierarchy that splits the training labels
    (country, else region) and multiply it into the answer (:mod:`geoscope.models.level_expert`)."""
    members: int = 1
    """Keep this many of the runs (those of lowest validation loss) as one model, their logits averaged
    (:class:`~geoscope.models.ensemble.PlaceEnsemble`); at most the number of runs (restarts × search)."""
    name: str = "geoscope-model"
    block_km: float = 1.0
    """Without a ``split`` column the manifest is split by blocks of this size (val 10 %, test 10 %)."""
    gap_km: float = 0.1
    """…and training images closer than this to a val or test image are left out (near-duplicates)."""
    provenance: dict | None = None
    """The training manifest's dataset record (:func:`geoscope.data.provenance.read_dataset_card`)."""
    device: str = "cpu"
    """Torch device to train on (``cuda:0``: see :func:`geoscope.distributed.start`)."""

    @property
    def image_side(self) -> ImageSide:
        return ImageSide(self.image_encoder, self.finetune_blocks, self.crops)
