"""What the place-name and GPS heads share: a CLIP-style network between image features and candidates.

The network (:class:`~geoscope.models.place_clip.PlaceCLIP`, or an ensemble of them) embeds the views of
a place and its candidates into one space; the cosine similarity times a learned temperature is the
logit. A head differs from another only in what a candidate is read from (:attr:`places_from`: a
prompt's text embedding, or its coordinates through a location encoder) and in a few class
attributes. A bundle stores the network's weights under ``model.`` (its place tower and text head left
out) and the candidates already embedded as ``place_embeddings``, so predict never runs a text or
location encoder.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import ClassVar, Self

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..ensemble import PlaceEnsemble, PlaceNetwork, make_network, member_count
from ..losses import haversine_smoothed_targets, soft_cross_entropy
from ..place_clip import PlaceCLIP, PlaceCLIPConfig, is_stored_embedded
from ..projection import IMAGE_HEADS, ProjectionHead, laid_out_for_answers
from .base import Batch, Step, TrainingSettings

NETWORK = "model."
"""Prefix of the network's weights in a bundle."""
CANDIDATES = "place_embeddings"
"""Key of the embedded candidates in a bundle."""
TYPE = "place-clip"
"""The ``model.type`` of every contrastive head's section."""


class ContrastiveHead(nn.Module):
    """A CLIP-style head over its candidates; subclasses say what a candidate is read from."""

    kind: ClassVar[str]
    title: ClassVar[str]
    places_from: ClassVar[str]
    """What the network's place tower reads (:data:`geoscope.models.place_clip.PLACES_FROM`)."""
    offsets: ClassVar[bool] = True
    """Whether each candidate may learn its own offset (``learn_place_offsets``)."""
    trainable: ClassVar[bool] = True
    refines: ClassVar[bool] = False
    merge_km: ClassVar[float] = 0.0

    def __init__(self, network: PlaceNetwork, inputs: np.ndarray | torch.Tensor | None = None,
                 places: np.ndarray | torch.Tensor | None = None) -> None:
        """``inputs``: what the network reads of each candidate (training); ``places``: the candidates already
        embedded (a stored head). One of the two."""
        super().__init__()
        if (inputs is None) == (places is None):
            raise ValueError("a head needs its candidates: their inputs or their embeddings")
        self.network = network
        # the loop passes the same tensor at every step, so a frozen place tower reads it once
        self.register_buffer("inputs", None if inputs is None else torch.as_tensor(inputs, dtype=torch.float32),
                             persistent=False)
        self.places: torch.Tensor | None = None if places is None else \
            torch.from_numpy(np.asarray(places, dtype=np.float32))

    # ---------------------------------------------------------------- what every head says

    @property
    def config(self) -> PlaceCLIPConfig:
        return self.network.config

    @property
    def fusion(self) -> str:
        return self.config.fusion

    @property
    def image_dim(self) -> int:
        return self.config.image_dim

    @property
    def embedding_dim(self) -> int:
        return self.network.embedding_dim

    def __len__(self) -> int:
        return len(self.places if self.places is not None else self.inputs)

    def to_dict(self) -> dict:
        return {"head": self.kind, "type": TYPE, "place_clip": self.config.to_dict(),
                "members": member_count(self.network)}

    @classmethod
    def from_dict(cls, section: Mapping, tensors: Mapping[str, np.ndarray], prefix: str = "") -> Self:
        config = PlaceCLIPConfig(**section["place_clip"])
        network = make_network(config, int(section.get("members", 1)), places_embedded=True)
        stored = f"{prefix}{NETWORK}"
        weights = {k.removeprefix(stored): torch.from_numpy(v.copy()) for k, v in tensors.items()
                   if k.startswith(stored)}
        missing = network.load_state_dict(weights, strict=False).missing_keys
        if missing:
            raise ValueError(f"the weights lack {len(missing)} tensor(s) of the model, first {stored}{missing[0]}; "
                             "retrain it or restore weights.safetensors")
        return cls(laid_out_for_answers(network.eval()), places=tensors[f"{prefix}{CANDIDATES}"])

    def tensors(self, prefix: str = "", candidates_dtype: type = np.float32) -> dict[str, np.ndarray]:
        """The network's weights under ``model.`` (its place tower and text head left out) and the embedded
        candidates (``place_embeddings``, as ``candidates_dtype``), each key under ``prefix``."""
        out = {f"{prefix}{NETWORK}{k}": v.detach().cpu().numpy() for k, v in self.network.state_dict().items()
               if not is_stored_embedded(k)}
        with torch.no_grad():
            out[f"{prefix}{CANDIDATES}"] = self.candidates().cpu().numpy().astype(candidates_dtype)
        return out

    @classmethod
    def check(cls, section: Mapping, tensors: Mapping[str, np.ndarray], labels: int) -> str | None:
        places = tensors.get(CANDIDATES)
        if places is None or places.ndim != 2:
            return f"weights.safetensors has no {CANDIDATES!r} matrix (incomplete or foreign bundle)"
        if places.shape[0] != labels:
            return f"labels.csv has {labels} rows but weights.safetensors holds {places.shape[0]} places"
        return None

    @classmethod
    def said(cls, config: Mapping, labels: pd.DataFrame) -> str:
        """What its candidates are read from, then how both sides reach one space (and how many networks)."""
        section = config["model"]
        image = IMAGE_HEADS[section["place_clip"]["image_head"]].said
        into = (f"each {image} into one space" if image == ProjectionHead.said else
                f"the image features {image} and the places {ProjectionHead.said} into one space")
        members = int(section.get("members", 1))
        if members > 1:
            into += f", in {members} heads trained alike from different seeds whose logits are averaged"
        return f"{cls.places_said(config, labels)},\n{into}"

    @classmethod
    def places_said(cls, config: Mapping, labels: pd.DataFrame) -> str:
        """What a candidate is read from, for the model card."""
        raise NotImplementedError

    def embed_views(self, features: torch.Tensor, mask: torch.Tensor, headings: torch.Tensor,
                    noise: float = 0.0) -> torch.Tensor:
        return self.network.embed_views(features, mask, headings, noise)

    def logits(self, embeddings: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        places = self.candidates() if candidates is None else candidates
        return self.network.scale() * embeddings @ places.T

    # ---------------------------------------------------------------- what training asks

    @staticmethod
    def candidate_inputs(labels: pd.DataFrame, text_encoder: str) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def create(cls, settings: TrainingSettings, image_dim: int, inputs: np.ndarray) -> Self:
        _seed_everything(settings.seed)  # the initial weights are the run's first draws
        inputs = np.asarray(inputs, dtype=np.float32)
        n_places = len(inputs) if cls.offsets and settings.learn_place_offsets else 0
        config = PlaceCLIPConfig(image_dim, inputs.shape[1], settings.embed_dim, settings.dropout, n_places=n_places,
                                 fusion=settings.fusion, image_head=settings.image_head, places_from=cls.places_from,
                                 location=settings.location)
        return cls(PlaceCLIP(config), inputs=inputs)

    @classmethod
    def ensemble(cls, heads: Sequence[Self]) -> Self:
        return cls(PlaceEnsemble.of([h.network for h in heads]), inputs=heads[0].inputs)

    def text_encoder(self, name: str) -> dict | None:
        return None

    def parameter_groups(self, settings: TrainingSettings) -> list[dict]:
        network = self.network
        if not isinstance(network, PlaceCLIP):
            raise ValueError("an ensemble is assembled from trained heads, not trained itself")
        return [
            {"name": "head", "params": [*network.image_head.parameters(), *network.fusion.parameters(),
                                        network.logit_scale],
             "lr": settings.lr_head, "weight_decay": settings.wd_head},
            {"name": "text", "params": [*network.text_head.parameters(), *network.place_tower.parameters(),
                                        network.place_offsets],
             "lr": settings.lr_text, "weight_decay": settings.wd_text},
        ]

    def set_image_statistics(self, features: torch.Tensor) -> None:
        self.network.set_image_statistics(features)

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        return self.network.standardize(features)

    def feature_scale(self) -> torch.Tensor:
        return self.network.image_scale

    def candidates(self) -> torch.Tensor:
        return self.places if self.places is not None else self.network.embed_places(self.inputs)

    def fix_candidates(self) -> Self:
        self.eval()
        with torch.no_grad():
            self.places = self.network.embed_places(self.inputs).detach().cpu()
        return self

    def forward(self, features: torch.Tensor, mask: torch.Tensor, headings: torch.Tensor, noise: float,
                loss: str) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The label loss needs the logits; the seed's clip loss the embeddings (gathered across ranks before
        they meet). Calls keep the order of random draws (dropout, noise) of one process."""
        if loss == "clip":
            places = self.network.embed_places(self.inputs)
            scale = self.network.scale()
            return self.network.embed_views(features, mask, headings, noise), places, scale
        return self.network(features, mask, headings, self.inputs, noise)

    def loss(self, step: Step, batch: Batch, settings: TrainingSettings, noise: float) -> torch.Tensor:
        """``"clip"``: the seed's loss, each image against the candidates of its batch and back (the whole
        batch, gathered from every rank: the in-batch negatives are those of one process); ``"label"``: softmax
        over all candidates against haversine-smoothed targets, plus the coarser levels' losses, on this rank's
        items (weighted by their share)."""
        if settings.loss == "clip":
            embedded, places, scale = step(batch.inputs, batch.mask, batch.headings, noise, "clip")
            embedded = batch.gather(embedded)
            labels = batch.labels if batch.all_labels is None else batch.all_labels
            logits = scale * embedded @ places[labels].T
            same = (labels[:, None] == labels[None, :]).float()
            targets = same / same.sum(dim=1, keepdim=True)
            return 0.5 * (soft_cross_entropy(logits, targets) + soft_cross_entropy(logits.T, targets))
        logits = step(batch.inputs, batch.mask, batch.headings, noise, "label")
        coords = batch.candidate_coords
        targets = haversine_smoothed_targets(batch.labels, batch.lat, batch.lon, coords[:, 0], coords[:, 1],
                                             settings.label_smoothing_km).float()
        loss = soft_cross_entropy(logits, targets)
        if batch.level_groups:
            probabilities = torch.softmax(logits, dim=-1)
            for members in batch.level_groups:
                group_p = (probabilities @ members).clamp(min=1e-8)
                loss = loss + settings.level_weight * -(targets @ members * group_p.log()).sum(dim=-1).mean()
        return loss * batch.weight


def _seed_everything(seed: int) -> None:
    """Make a run repeatable from its start: Python, numpy and torch generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
