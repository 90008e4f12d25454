"""Named image and text encoders, each with its own preprocessing (see :mod:`.image`, :mod:`.text`).

Attributes load lazily, so importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Preprocess": ".preprocess",
    "Views": ".preprocess",
    "EncoderSpec": ".image",
    "ImageEncoder": ".image",
    "available_image_encoders": ".image",
    "get_image_encoder": ".image",
    "split_efficientnet": ".efficientnet",
    "TextEncoder": ".text",
    "available_text_encoders": ".text",
    "get_text_encoder": ".text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
