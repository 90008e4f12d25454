"""Every head by name: the one place that knows which heads there are.

A new head is a file in this folder (a class with the :class:`~geoscope.models.heads.base.Head`
protocol's members) and its line in :data:`HEADS`; ``--head`` offers every trainable one, bundles and
predict find it by the ``head`` its ``config.json`` section names.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ...errors import ModelError
from .base import Head, TrainableHead
from .contrastive import ContrastiveHead
from .gps import GPSHead
from .place_names import PlaceNamesHead
from .zero_shot import ZeroShotHead

HEADS: dict[str, type[Head]] = {head.kind: head for head in (
    PlaceNamesHead,
    GPSHead,
    ZeroShotHead,
)}
"""Each head class by its kind."""
TRAINABLE: tuple[str, ...] = tuple(kind for kind, head in HEADS.items() if head.trainable)
"""The kinds ``geoscope train --head`` takes (the first is the default)."""
REFINING: tuple[str, ...] = tuple(kind for kind, head in HEADS.items() if getattr(head, "refines", False))
"""The kinds whose bundles can refine another model's guesses (``geoscope train --refiner``)."""


def head_class(kind: str) -> type[Head]:
    """The head class called ``kind``, or one clear error."""
    try:
        return HEADS[kind]
    except (KeyError, TypeError):
        raise ModelError(f"unknown head {kind!r} (known: {', '.join(HEADS)})") from None


def trainable_head(kind: str) -> type[TrainableHead]:
    """The trainable head class called ``kind``, or one clear error."""
    head = head_class(kind)
    if not head.trainable:
        raise ModelError(f"the {kind} head is not trained (trainable: {', '.join(TRAINABLE)})")
    return head  # type: ignore[return-value]


def head_kind(section: Mapping) -> str:
    """The kind of head a ``model`` section describes. Sections written before heads were named (bundle format 1
    without ``head``) are contrastive heads, told apart by what their network reads of a place."""
    if "head" in section:
        return section["head"]
    places_from = (section.get("place_clip") or {}).get("places_from", PlaceNamesHead.places_from)
    found = [kind for kind, head in HEADS.items()
             if issubclass(head, ContrastiveHead) and head.places_from == places_from]
    return found[0] if found else str(places_from)


def head_from_dict(section: Mapping, tensors: Mapping[str, np.ndarray], prefix: str = "") -> Head:
    """The head a bundle stores: its ``model`` section and its tensors under ``prefix``."""
    return head_class(head_kind(section)).from_dict(section, tensors, prefix)
