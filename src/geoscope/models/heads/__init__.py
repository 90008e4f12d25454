"""Heads: what scores image embeddings over candidates (place names, GPS points, zero-shot prompts).

One protocol (:mod:`.base`), one file per head, one registry (:mod:`.registry`).
"""

from .base import Batch, Head, TrainableHead, TrainingSettings
from .registry import HEADS, REFINING, TRAINABLE, head_class, head_from_dict, head_kind, trainable_head

__all__ = ["HEADS", "REFINING", "TRAINABLE", "Batch", "Head", "TrainableHead", "TrainingSettings", "head_class",
           "head_from_dict", "head_kind", "trainable_head"]
