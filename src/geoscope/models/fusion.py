"""View fusion: the embeddings of a place's views (several headings of one spot) → one embedding.

``mean`` averages the unit embeddings of the views it has. The learned fusions start as
that mean and learn a correction (their output layer starts at zero): ``lstm`` reads the
views in heading order, as GeoguessrLSTM does, and adds a projection of its last state;
``attention`` lets the views attend to each other (one transformer layer, each view told
its compass heading when known) and adds the projection of their pooled outputs. Any
number of views works; a missing view is masked out, and a single view is its own answer
with ``mean``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FUSIONS = ("mean", "lstm", "attention")


def masked_mean(views: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the views present: ``(B, V, E)`` with mask ``(B, V)`` → ``(B, E)``."""
    weights = mask.to(views.dtype)
    return (views * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp(min=1.0)


def heading_features(headings: torch.Tensor) -> torch.Tensor:
    """Compass headings in degrees ``(B, V)`` → ``(B, V, 3)``: sine, cosine, and 1 where known (NaN: zeros)."""
    known = torch.isfinite(headings)
    radians = torch.where(known, headings, torch.zeros_like(headings)) * (math.pi / 180.0)
    k = known.to(torch.float32)
    return torch.stack([torch.sin(radians) * k, torch.cos(radians) * k, k], dim=-1)


class MeanFusion(nn.Module):
    """The unit mean of the views' unit embeddings (no parameters)."""

    def forward(self, views: torch.Tensor, mask: torch.Tensor, headings: torch.Tensor) -> torch.Tensor:
        return F.normalize(masked_mean(views, mask), dim=-1)


class LSTMFusion(nn.Module):
    """GeoguessrLSTM's fusion: an LSTM over the views in heading order; its last state corrects the mean."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, views: torch.Tensor, mask: torch.Tensor, headings: torch.Tensor) -> torch.Tensor:
        # present views first, in heading order (unknown headings keep their given order)
        key = torch.where(mask, torch.nan_to_num(headings, nan=0.0), torch.full_like(headings, float("inf")))
        order = torch.sort(key, dim=1, stable=True).indices
        ordered = torch.gather(views, 1, order[..., None].expand_as(views))
        lengths = mask.sum(dim=1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(ordered, lengths, batch_first=True, enforce_sorted=False)
        _, (last, _) = self.lstm(packed)
        return F.normalize(masked_mean(views, mask) + self.out(last[-1]), dim=-1)


class AttentionFusion(nn.Module):
    """One transformer layer over the views (with their headings), pooled; corrects the mean."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.heading = nn.Linear(3, dim)
        self.layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.1,
                                                batch_first=True, norm_first=True)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, views: torch.Tensor, mask: torch.Tensor, headings: torch.Tensor) -> torch.Tensor:
        x = views + self.heading(heading_features(headings))
        attended = self.layer(x, src_key_padding_mask=~mask)
        return F.normalize(masked_mean(views, mask) + self.out(masked_mean(attended, mask)), dim=-1)


def make_fusion(kind: str, dim: int) -> nn.Module:
    """The fusion named ``kind`` (one of :data:`FUSIONS`) over embeddings of size ``dim``."""
    if kind == "mean":
        return MeanFusion()
    if kind == "lstm":
        return LSTMFusion(dim)
    if kind == "attention":
        return AttentionFusion(dim)
    raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, not {kind!r}")


def group_views(codes: np.ndarray, headings: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each place's rows as a table: ``codes`` (one place code 0…G−1 per row) → image rows ``(G, V)``
    (−1 where a place has fewer than V views) and their headings ``(G, V)`` (NaN where unknown),
    each place's views in heading order (rows without a heading keep their order, after the others)."""
    codes = np.asarray(codes, dtype=np.int64)
    n = len(codes)
    heading = np.full(n, np.nan) if headings is None else np.asarray(headings, dtype=np.float64)
    order = np.lexsort((np.arange(n), np.nan_to_num(heading, nan=np.inf), codes))
    counts = np.bincount(codes, minlength=int(codes.max()) + 1 if n else 0)
    slot = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    views = np.full((len(counts), max(1, int(counts.max()) if n else 1)), -1, dtype=np.int64)
    views[codes[order], slot] = order
    angles = np.full(views.shape, np.nan)
    angles[codes[order], slot] = heading[order]
    return views, angles


def group_mean(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Mean of the rows of ``values`` per group code (0…G−1): ``(G, dim)`` float32."""
    sums = np.zeros((int(codes.max()) + 1, values.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, values)
    return (sums / np.bincount(codes)[:, None]).astype(np.float32)
