"""Ranked location guesses for images, from a model bundle.

``GeoModel`` holds a bundle's place embeddings (computed once at training time), its
image head and the frozen encoder it was trained on; ``predict`` answers with the
top-k places, their coordinates and probabilities, for each image or for the fused
views of one place.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .bundle import BundleFiles, read_bundle
from .errors import ModelError
from .features import FeatureSet
from .knn import knn_locate
from .models.image_side import ImageSide, apply_adapter
from .models.place_clip import PlaceCLIP, PlaceCLIPConfig

if TYPE_CHECKING:
    from .encoders.image import ImageEncoder


@dataclass(frozen=True)
class Guess:
    """One ranked guess: where, which place, how likely."""

    lat: float
    lon: float
    label: str
    probability: float

    def to_dict(self) -> dict:
        return {"lat": round(self.lat, 6), "lon": round(self.lon, 6), "label": self.label,
                "probability": round(self.probability, 6)}


@dataclass
class Prediction:
    """The guesses for one image (or one place seen from several views), or why it failed."""

    image: str
    guesses: list[Guess]
    error: str | None = None
    views: list[str] | None = None

    def to_dict(self) -> dict:
        out: dict = {"image": self.image, "guesses": [g.to_dict() for g in self.guesses]}
        if self.views is not None:
            out["views"] = self.views
        if self.error is not None:
            out["error"] = self.error
        return out


class GeoModel:
    """A loaded model bundle, ready to predict."""

    def __init__(self, files: BundleFiles) -> None:
        self.files = files
        self.config = files.config
        self.labels = files.labels
        self.path = files.path
        try:
            model_cfg = PlaceCLIPConfig(**self.config["model"]["place_clip"])
            self.model = PlaceCLIP(model_cfg)
            heads = {k.removeprefix("model."): torch.from_numpy(v.copy())
                     for k, v in files.tensors.items() if k.startswith("model.")}
            self.model.load_state_dict(heads, strict=False)
            self.model.eval()
            self.place_embeddings = torch.from_numpy(files.tensors["place_embeddings"].astype(np.float32))
            self.image_side = ImageSide.from_dict(self.config["image_encoder"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelError(f"{files.path}: incompatible model bundle ({str(exc).splitlines()[0]})") from None
        if len(self.labels) != self.place_embeddings.shape[0]:
            raise ModelError(f"{files.path}: labels.csv has {len(self.labels)} rows but the weights "
                             f"hold {self.place_embeddings.shape[0]} places")
        self._adapter: torch.nn.Module | None = None
        self._encoder = None

    @property
    def encoder(self) -> ImageEncoder:
        """The image encoder whose outputs the model reads (loaded on first use, then reused)."""
        if self._encoder is None:
            from .encoders.image import get_image_encoder

            self._encoder = get_image_encoder(self.image_side.cached_encoder)
        return self._encoder

    @property
    def adapter(self) -> torch.nn.Module:
        """Cached encoder outputs → image features (the fine-tuned encoder top, if any; loaded on first use)."""
        if self._adapter is None:
            adapter = self.image_side.adapter()
            if self.image_side.finetune_blocks:
                weights = {k.removeprefix("image_top."): torch.from_numpy(v.copy())
                           for k, v in self.files.tensors.items() if k.startswith("image_top.")}
                try:
                    adapter.load_state_dict(weights)
                except RuntimeError as exc:
                    raise ModelError(f"{self.path}: fine-tuned encoder weights do not fit "
                                     f"({str(exc).splitlines()[0]})") from None
            self._adapter = adapter.eval()
        return self._adapter

    def image_features(self, images: Sequence[str | os.PathLike[str]], *, progress: bool = False) -> FeatureSet:
        """Image features of each image (NaN rows for unreadable ones, listed in ``errors``)."""
        features = self.image_side.extract([Path(p) for p in images], progress=progress, encoder=self.encoder)
        features.embeddings = apply_adapter(self.adapter, features.embeddings)
        return features

    @torch.no_grad()
    def embed(self, features: np.ndarray) -> np.ndarray:
        """Unit image embeddings in the shared space for image features ``(n, dim)``."""
        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        return self.model.embed_images(x).numpy()

    @torch.no_grad()
    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """Probability of every place for unit image embeddings ``(n, embed_dim)``."""
        e = torch.nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float32), dim=-1)
        logits = self.model.scale() * e @ self.place_embeddings.T
        return torch.softmax(logits, dim=-1).numpy()

    @property
    def training_centroid(self) -> tuple[float, float]:
        """The spherical centre of the training images (the centroid baseline's answer)."""
        lat, lon = self.config["training"]["centroid"]
        return float(lat), float(lon)

    def knn(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """kNN baseline: locate image features among the training gallery."""
        t = self.files.tensors
        query = (np.asarray(features, dtype=np.float32) - t["gallery.pca_mean"]) @ t["gallery.pca_components"].T
        return knn_locate(query, t["gallery.features"].astype(np.float32),
                          t["gallery.lat"], t["gallery.lon"])

    def guesses(self, probabilities: np.ndarray, top_k: int) -> list[Guess]:
        """The ``top_k`` most probable places of one probability row."""
        order = np.argsort(-probabilities)[: max(1, top_k)]
        rows = self.labels.iloc[order]
        return [Guess(float(r.lat), float(r.lon), str(r.name), float(p))
                for r, p in zip(rows.itertuples(index=False), probabilities[order], strict=True)]

    def predict(
        self, images: Sequence[str | os.PathLike[str]], top_k: int = 5, *, views: bool = False,
        progress: bool = False,
    ) -> list[Prediction]:
        """Guesses for each image; with ``views=True`` the images are views of one place, fused.

        Unreadable images come back with ``error`` set and no guesses; the others are answered.
        """
        paths = [str(p) for p in images]
        fs = self.image_features(paths, progress=progress)
        embeddings = self.embed(np.nan_to_num(fs.embeddings))
        valid = np.asarray(fs.valid, dtype=bool)
        errors = dict(zip(np.flatnonzero(~valid).tolist(), fs.errors, strict=True))  # in row order
        if views:
            if not valid.any():
                return [Prediction(paths[0], [], "no readable view", views=paths)]
            fused = embeddings[valid].mean(axis=0, keepdims=True)
            probs = self.probabilities(fused)[0]
            return [Prediction(paths[0], self.guesses(probs, top_k),
                               views=[p for p, ok in zip(paths, valid, strict=True) if ok])]
        probs = self.probabilities(embeddings)
        return [
            Prediction(p, self.guesses(probs[i], top_k)) if valid[i]
            else Prediction(p, [], errors[i])
            for i, p in enumerate(paths)
        ]


def load_model(directory: str | os.PathLike[str] | None = None) -> GeoModel:
    """Load a bundle directory (or the bundled default model) for prediction."""
    return GeoModel(read_bundle(directory))
