"""Several place heads that answer as one: a product of experts in one embedding space.

Heads trained alike from different seeds land in different minima; together they decide better
than the best of them (the default model: GeoScore 4806 for three seeds against 4780 for the best
one). Their logits are averaged, so the probabilities are the members' normalised geometric mean
(it measured as the arithmetic mean did: 4806 and 4808). That mean is one dot product: each member's
unit image embedding, concatenated and divided by √K, is a unit vector, and each place the
concatenation of the members' place embeddings, each weighted by its member's temperature over the
ensemble's. Everything that reads a head (``embed_views``, ``embed_places``, ``scale``) works unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .place_clip import PlaceCLIP, PlaceCLIPConfig


class PlaceEnsemble(nn.Module):
    """``members`` place heads of one configuration (same labels, features and fusion), answering together."""

    def __init__(self, config: PlaceCLIPConfig, members: int, *, places_embedded: bool = False) -> None:
        super().__init__()
        if members < 2:
            raise ValueError("an ensemble needs at least two members")
        self.config = config
        self.members = nn.ModuleList(PlaceCLIP(config, places_embedded=places_embedded) for _ in range(members))

    @classmethod
    def of(cls, heads: Sequence[PlaceCLIP]) -> PlaceEnsemble:
        """An ensemble holding (copies of the weights of) trained ``heads``, which share one configuration."""
        configs = {h.config for h in heads}
        if len(configs) != 1:
            raise ValueError("the members of an ensemble must share one configuration")
        ensemble = cls(heads[0].config, len(heads))
        for member, head in zip(ensemble.members, heads, strict=True):
            member.load_state_dict(head.state_dict())
        return ensemble.eval()

    @property
    def embedding_dim(self) -> int:
        return self.config.embed_dim * len(self.members)

    @property
    def image_scale(self) -> torch.Tensor:
        """The members' feature scaling (fitted on the same training rows, so alike)."""
        return self.members[0].image_scale

    def _scales(self) -> torch.Tensor:
        return torch.stack([m.scale() for m in self.members])

    def scale(self) -> torch.Tensor:
        """The members' mean inverse temperature."""
        return self._scales().mean()

    def embed_views(self, image_features: torch.Tensor, mask: torch.Tensor, headings: torch.Tensor,
                    noise: float = 0.0) -> torch.Tensor:
        """One unit embedding per place: every member's, concatenated, over √K (the features standardised once
        when the members' statistics are the same, as they are when fitted on the same rows)."""
        first = self.members[0]
        if all(torch.equal(m.image_shift, first.image_shift) and torch.equal(m.image_scale, first.image_scale)
               for m in self.members[1:]):
            x = first.standardize(image_features)
            parts = [m.embed_views(x, mask, headings, noise, standardized=True) for m in self.members]
        else:
            parts = [m.embed_views(image_features, mask, headings, noise) for m in self.members]
        return torch.cat(parts, dim=-1) / math.sqrt(len(parts))

    def embed_places(self, text_features: torch.Tensor) -> torch.Tensor:
        """Every member's place embeddings, each weighted by its temperature over the ensemble's, over √K:
        ``scale() · image @ places.T`` is then the members' mean logit."""
        weights = self._scales() / self.scale()
        parts = [w * m.embed_places(text_features) for w, m in zip(weights, self.members, strict=True)]
        return torch.cat(parts, dim=-1) / math.sqrt(len(parts))


PlaceNetwork = PlaceCLIP | PlaceEnsemble
"""What a contrastive head's ``model.*`` tensors hold (:mod:`geoscope.models.heads.contrastive`)."""
Head = PlaceNetwork
"""The older name of :data:`PlaceNetwork` (what :class:`geoscope.answer.refine.PointRefiner` is typed with)."""


def member_count(network: PlaceNetwork) -> int:
    """How many networks answer together in ``network`` (1 for a single one)."""
    return len(network.members) if isinstance(network, PlaceEnsemble) else 1


def make_network(config: PlaceCLIPConfig, members: int = 1, *, places_embedded: bool = False) -> PlaceNetwork:
    """One place network, or an ensemble of ``members``."""
    return PlaceCLIP(config, places_embedded=places_embedded) if members == 1 \
        else PlaceEnsemble(config, members, places_embedded=places_embedded)
