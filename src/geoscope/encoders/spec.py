"""What defines an image encoder before any weights are loaded: its spec and its fingerprint."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .preprocess import Preprocess

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class EncoderSpec:
    """What defines an image encoder before any weights are loaded.

    ``build`` returns the torch module (float32 NCHW images → ``output_shape`` per image);
    ``fingerprint`` changes whenever weights, architecture or preprocessing change.
    """

    name: str
    preprocess: Preprocess
    output_shape: tuple[int, ...]
    fingerprint: str
    build: Callable[[], nn.Module]
    storage_dtype: str = "float32"
    mixed_scales: bool = False
    """Outputs concatenate blocks on different scales (``<name>/stats``): heads standardise them per dimension."""
    weights: Path | None = None
    """The file its pretrained weights come from (an installed package's), where one file holds them all: a graph
    shipped without its weights (:mod:`geoscope.encoders.shipped`) takes them from there."""


def fingerprint(*parts: object) -> str:
    """A stable hex digest of some identifying values."""
    return hashlib.sha1("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()
