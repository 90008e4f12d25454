"""The place-name head (``--head place``, the seed's): each label is the text embedding of a prompt naming it.

The prompts ("a street view photo in Leeds, United Kingdom") go through a named text encoder
(:mod:`geoscope.encoders.text`) once, before training; each label may also learn its own offset from
its name's embedding (names can repeat or say little).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ...encoders.text import get_text_encoder
from ...geo.labels import prompt
from .contrastive import ContrastiveHead

PROMPT = "a street view photo in {name}, {country}"
"""How :func:`geoscope.geo.labels.prompt` says a label (recorded in ``config.json``)."""


class PlaceNamesHead(ContrastiveHead):
    """Image features against the text embeddings of the labels' names."""

    kind = "place"
    title = "place-name"
    places_from = "names"

    @staticmethod
    def candidate_inputs(labels: pd.DataFrame, text_encoder: str) -> np.ndarray:
        texts = [prompt(n, c) for n, c in zip(labels["name"], labels["country_code"], strict=True)]
        return get_text_encoder(text_encoder).encode(texts).astype(np.float32)

    def text_encoder(self, name: str) -> dict | None:
        return {"name": name, "prompt": PROMPT}

    @classmethod
    def places_said(cls, config: Mapping, labels: pd.DataFrame) -> str:
        return (f"`{(config.get('text_encoder') or {}).get('name')}` embeddings of prompts such as "
                f"\"{prompt(labels['name'].iloc[0])}\"")
