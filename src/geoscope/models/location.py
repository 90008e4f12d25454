"""A location encoder in GeoCLIP's manner: coordinates → an embedding, smooth at several scales.

Latitude and longitude are projected with the Equal Earth projection (equal areas, so a
degree near the pole weighs what it covers), mapped by random Fourier features at a few
scales σ (GeoCLIP: 2^0, 2^4, 2^8, from continents to streets), each scale through its own
MLP; the branches' outputs are summed. :func:`load_geoclip` reads the pretrained encoder that
the ``geoclip`` wheel carries (same shapes: 256 Fourier pairs, 1024 hidden, 512 out).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
from torch import nn

from ..errors import GeoscopeError

GEOCLIP_SIGMAS = (2.0**0, 2.0**4, 2.0**8)
_A1, _A2, _A3, _A4, _SCALE = 1.340264, -0.081106, 0.000893, 0.003796, 66.50336


def equal_earth(coords: torch.Tensor) -> torch.Tensor:
    """``(n, 2)`` latitude, longitude in degrees → Equal Earth ``(x, y)``, scaled so the map spans about ±1."""
    lat, lon = torch.deg2rad(coords[:, 0]), torch.deg2rad(coords[:, 1])
    theta = torch.asin(math.sqrt(3.0) / 2 * torch.sin(lat))
    t2 = theta * theta
    x = 2 * math.sqrt(3.0) * lon * torch.cos(theta) / (3 * (9 * _A4 * t2**4 + 7 * _A3 * t2**3 + 3 * _A2 * t2 + _A1))
    y = theta * (_A4 * t2**4 + _A3 * t2**3 + _A2 * t2 + _A1)
    return torch.stack((x, y), dim=1) * (_SCALE / 180.0)


class FourierBranch(nn.Module):
    """Random Fourier features at one scale σ (a fixed Gaussian matrix), then an MLP."""

    def __init__(self, sigma: float, pairs: int, hidden: int, out: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("b", torch.randn(pairs, 2, generator=generator) * sigma)
        self.mlp = nn.Sequential(nn.Linear(2 * pairs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, projected: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * projected @ self.b.T
        return self.mlp(torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1))


class LocationEncoder(nn.Module):
    """Coordinates ``(n, 2)`` in degrees → ``(n, out)``: the sum of one :class:`FourierBranch` per scale."""

    def __init__(self, sigmas: tuple[float, ...] = GEOCLIP_SIGMAS, pairs: int = 256, hidden: int = 1024,
                 out: int = 512, seed: int = 0) -> None:
        super().__init__()
        self.out_dim = out
        self.branches = nn.ModuleList(FourierBranch(s, pairs, hidden, out, seed + i) for i, s in enumerate(sigmas))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        projected = equal_earth(coords.to(torch.float32))
        return torch.stack([branch(projected) for branch in self.branches]).sum(dim=0)


def geoclip_weights_path() -> Path:
    """The pretrained location encoder the ``geoclip`` wheel carries."""
    spec = importlib.util.find_spec("geoclip")  # found, not imported: its own imports need what --no-deps left out
    if spec is None or not spec.submodule_search_locations:
        raise GeoscopeError("GeoCLIP's location encoder needs: pip install --no-deps geoclip==1.3.0")
    return Path(spec.submodule_search_locations[0]) / "model" / "weights" / "location_encoder_weights.pth"


def load_geoclip(encoder: LocationEncoder) -> LocationEncoder:
    """Copy GeoCLIP's pretrained weights (and Fourier matrices) into ``encoder`` (GeoCLIP's shapes)."""
    state = torch.load(geoclip_weights_path(), map_location="cpu", weights_only=True)
    mapped = {}
    for i in range(len(encoder.branches)):
        mapped[f"branches.{i}.b"] = state[f"LocEnc{i}.capsule.0.b"]
        for ours, theirs in ((0, "capsule.1"), (2, "capsule.3"), (4, "capsule.5"), (6, "head.0")):
            for part in ("weight", "bias"):
                mapped[f"branches.{i}.mlp.{ours}.{part}"] = state[f"LocEnc{i}.{theirs}.{part}"]
    try:
        encoder.load_state_dict(mapped)
    except RuntimeError as exc:
        raise GeoscopeError(f"GeoCLIP's location encoder does not fit this one ({str(exc).splitlines()[0]}): "
                            "use its shapes (3 scales, 256 pairs, 1024 hidden, 512 out)") from None
    return encoder
