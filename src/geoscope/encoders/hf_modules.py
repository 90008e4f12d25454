"""Small torch wrappers that turn ``transformers`` models into tensor-in, embedding-out modules."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ClipImageEmbedding(nn.Module):
    """CLIP vision tower + projection: pixels → image embeds (not normalised)."""

    def __init__(self, vision_model: nn.Module, projection: nn.Module) -> None:
        super().__init__()
        self.vision_model, self.projection = vision_model, projection

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection(self.vision_model(pixel_values=images).pooler_output)


class PooledImageModel(nn.Module):
    """Any vision backbone: its pooled output (else its first token), flattened per image."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=images)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state[:, 0]
        return pooled.flatten(1)


class ClipTextEmbedding(nn.Module):
    """CLIP text tower + projection: token ids → text embeds (not normalised)."""

    def __init__(self, text_model: nn.Module, projection: nn.Module) -> None:
        super().__init__()
        self.text_model, self.projection = text_model, projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return self.projection(out.pooler_output)


class PooledTextModel(nn.Module):
    """A BERT-like encoder pooled by masked mean or the CLS token, optionally L2-normalised."""

    def __init__(self, model: nn.Module, pooling: str = "mean", normalize: bool = False) -> None:
        super().__init__()
        self.model, self.pooling, self.normalize = model, pooling, normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled
