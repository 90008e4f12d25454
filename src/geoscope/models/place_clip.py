"""The seed's network: CLIP between street-view images and places.

Image embeddings (from a frozen or partly fine-tuned image encoder) and place embeddings
(text embeddings of prompts such as "a street view photo in Leeds", or coordinates through a
location encoder) each pass through a :class:`ProjectionHead` into one space; the cosine
similarity times a learned temperature gives the logits of an image against every place.
The heads that train it (:mod:`geoscope.models.heads`) decide what a place is read from.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import make_fusion
from .location import LocationEncoder, load_geoclip
from .projection import IMAGE_HEADS, ProjectionHead

PLACES_FROM = ("names", "coordinates")
STORED_EMBEDDED = ("text_head", "place_tower")
"""The parts a bundle leaves out: it stores the places already embedded."""
LOCATIONS = ("geoclip", "geoclip-frozen", "scratch")


def is_stored_embedded(key: str) -> bool:
    """Whether a state-dict key belongs to a part that a bundle leaves out (see :data:`STORED_EMBEDDED`),
    in a head or in any member of an ensemble."""
    return any(part in STORED_EMBEDDED for part in key.split("."))


@dataclass(frozen=True)
class PlaceCLIPConfig:
    """Shapes and regularisation of a :class:`PlaceCLIP`."""

    image_dim: int
    text_dim: int
    embed_dim: int = 256
    dropout: float = 0.1
    init_temperature: float = 0.07
    n_places: int = 0
    """With n_places > 0 each place also learns its own offset, added to its name's embedding."""
    fusion: str = "mean"
    """How the views of one place become one embedding (:data:`geoscope.models.fusion.FUSIONS`)."""
    places_from: str = "names"
    """``names``: each place is the text embedding of its prompt (``text_dim`` wide); ``coordinates``: each
    place is its ``(lat, lon)`` through a :class:`~geoscope.models.location.LocationEncoder` (the GPS head)."""
    location: str = "geoclip"
    """With ``coordinates``: the location encoder starts from GeoCLIP's weights (``geoclip``), or stays
    GeoCLIP's, frozen (``geoclip-frozen``), or starts from random weights (``scratch``)."""
    image_head: str = "projection"
    """What reads the image features (:data:`geoscope.models.projection.IMAGE_HEADS`): the seed's projection
    head, or one linear map."""

    def __post_init__(self) -> None:
        if self.image_head not in IMAGE_HEADS:
            raise ValueError(f"image_head must be one of {', '.join(IMAGE_HEADS)}, not {self.image_head!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class PlaceCLIP(nn.Module):
    """Two projection heads and a learned temperature over image and place features.

    ``places_embedded``: the places come already embedded (a bundle stores them so), so the network has
    no place tower and no text head (:data:`STORED_EMBEDDED`) and :meth:`embed_places` is not available.
    """

    def __init__(self, config: PlaceCLIPConfig, *, places_embedded: bool = False) -> None:
        super().__init__()
        self.config = config
        self.image_head = IMAGE_HEADS[config.image_head](config.image_dim, config.embed_dim, config.dropout)
        if not places_embedded:
            self.place_tower = _place_tower(config)
            tower_dim = self.place_tower.out_dim if isinstance(self.place_tower, LocationEncoder) else config.text_dim
            self.text_head = ProjectionHead(tower_dim, config.embed_dim, config.dropout)
        self.places_embedded = places_embedded
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        self.place_offsets = nn.Parameter(torch.zeros(config.n_places, config.embed_dim))
        self.register_buffer("image_shift", torch.zeros(config.image_dim))
        self.register_buffer("image_scale", torch.ones(config.image_dim))
        self.fusion = make_fusion(config.fusion, config.embed_dim)
        self._tower_input: torch.Tensor | None = None  # what a frozen place tower last read, and its output
        self._tower_output: torch.Tensor | None = None

    @property
    def embedding_dim(self) -> int:
        """Width of the image and place embeddings."""
        return self.config.embed_dim

    def set_image_statistics(self, features: torch.Tensor) -> None:
        """Standardise image features by the per-dimension mean and std of these (training) rows.

        For encoders whose outputs mix scales (``<name>/stats``); without it the head would
        weigh dimensions by their scale. Features of one scale are better left as they are:
        standardising pooled EfficientNet features cost 10 km of median error in Croatia.
        """
        self.image_shift.copy_(features.mean(dim=0))
        self.image_scale.copy_(features.std(dim=0).clamp(min=1e-6))

    def standardize(self, image_features: torch.Tensor) -> torch.Tensor:
        """Image features as the head reads them (standardised, when :meth:`set_image_statistics` ran)."""
        if image_features.device.type == "cpu" and not image_features.requires_grad:
            # the same values through numpy, several times faster than torch's broadcasting on a CPU (measured)
            return torch.from_numpy((image_features.numpy() - self.image_shift.numpy()) / self.image_scale.numpy())
        return (image_features - self.image_shift) / self.image_scale

    def embed_images(self, image_features: torch.Tensor, noise: float = 0.0, *,
                     standardized: bool = False) -> torch.Tensor:
        """Unit-length image embeddings; ``noise`` (training) is the std of Gaussian noise added to the input;
        ``standardized``: the features are already as :meth:`standardize` gives them."""
        x = image_features if standardized else self.standardize(image_features)
        if noise > 0:
            x = x + noise * torch.randn_like(x)
        return F.normalize(self.image_head(x), dim=-1)

    def embed_views(self, image_features: torch.Tensor, mask: torch.Tensor, headings: torch.Tensor,
                    noise: float = 0.0, *, standardized: bool = False) -> torch.Tensor:
        """One unit embedding per place from its views: ``image_features`` holds the views present,
        in the order of ``mask``'s true entries; ``mask`` and ``headings`` (degrees, NaN unknown) are ``(B, V)``."""
        embedded = self.embed_images(image_features, noise, standardized=standardized)
        views = embedded.new_zeros((*mask.shape, embedded.shape[-1]))
        views[mask] = embedded
        return self.fusion(views, mask, headings)

    def embed_places(self, text_features: torch.Tensor) -> torch.Tensor:
        """Unit-length place embeddings (one row per place, in label order) from each place's text features,
        or its coordinates ``(lat, lon)`` with ``places_from="coordinates"``."""
        if self.places_embedded:
            raise ValueError("this network reads its places already embedded: it has no place tower")
        embedded = self.text_head(self._towered(text_features))
        if self.config.n_places:
            embedded = embedded + self.place_offsets
        return F.normalize(embedded, dim=-1)

    def _towered(self, text_features: torch.Tensor) -> torch.Tensor:
        """The places through the place tower; a tower that does not train reads the same places once."""
        weights = list(self.place_tower.parameters())
        if not weights or any(w.requires_grad for w in weights):
            return self.place_tower(text_features)
        if self._tower_input is not text_features:  # the loop passes one tensor of places at every step
            with torch.no_grad():
                self._tower_output = self.place_tower(text_features)
            self._tower_input = text_features
        return self._tower_output

    def scale(self) -> torch.Tensor:
        """Inverse temperature, clamped to 100 as in CLIP."""
        return self.logit_scale.exp().clamp(max=100.0)

    def forward(self, image_features: torch.Tensor, mask: torch.Tensor, headings: torch.Tensor,
                text_features: torch.Tensor, noise: float = 0.0) -> torch.Tensor:
        """Logits of every place seen (rows: its views fused, see :meth:`embed_views`) against every place text."""
        embedded = self.embed_views(image_features, mask, headings, noise)
        return self.scale() * embedded @ self.embed_places(text_features).T


def _place_tower(config: PlaceCLIPConfig) -> nn.Module:
    """What a place is read through before its projection head: nothing (names), or a location encoder."""
    if config.places_from == "names":
        return nn.Identity()
    if config.places_from != "coordinates" or config.location not in LOCATIONS:
        raise ValueError(f"places_from must be one of {PLACES_FROM} and location one of {LOCATIONS}")
    encoder = LocationEncoder()
    if config.location != "scratch":
        load_geoclip(encoder)
    if config.location == "geoclip-frozen":
        encoder.requires_grad_(False)
    return encoder
