"""Training objectives: the seed's symmetric CLIP loss and PIGEON's haversine label smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..geo.sphere import EARTH_RADIUS_KM


def symmetric_clip_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean of image→text and text→image cross-entropy, pairs on the diagonal (the seed's loss)."""
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def haversine_torch(lat1: torch.Tensor, lon1: torch.Tensor, lat2: torch.Tensor, lon2: torch.Tensor) -> torch.Tensor:
    """Great-circle distance in km (degrees in, broadcasting)."""
    p1, l1, p2, l2 = (torch.deg2rad(t) for t in (lat1, lon1, lat2, lon2))
    a = torch.sin((p2 - p1) / 2) ** 2 + torch.cos(p1) * torch.cos(p2) * torch.sin((l2 - l1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * torch.asin(torch.sqrt(a.clamp(0.0, 1.0)))


def haversine_smoothed_targets(
    label_index: torch.Tensor,
    true_lat: torch.Tensor,
    true_lon: torch.Tensor,
    label_lat: torch.Tensor,
    label_lon: torch.Tensor,
    tau_km: float,
) -> torch.Tensor:
    """PIGEON's soft targets over labels for images at the given true coordinates.

    Label ``j`` gets weight ``exp(−(d(j, x) − d(true, x)) / τ)``, normalised, so the true
    label leads and its geographic neighbours share the rest. ``tau_km`` ≤ 0 gives one-hot.
    """
    if tau_km <= 0:
        return F.one_hot(label_index, label_lat.shape[0]).float()
    d = haversine_torch(true_lat[:, None], true_lon[:, None], label_lat[None, :], label_lon[None, :])
    d_true = d.gather(1, label_index[:, None])
    return torch.softmax(-(d - d_true).clamp(min=0.0) / tau_km, dim=1)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a distribution over labels."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
