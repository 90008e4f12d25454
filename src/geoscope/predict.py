"""Ranked location guesses for images, from a model bundle.

``GeoModel`` holds a bundle's place embeddings (computed once at training time), its
image head and the frozen encoder it was trained on; ``predict`` answers (see
:mod:`geoscope.answer.answerer`) with the top-k places, the hierarchy of countries and regions,
coverage and confidence, for each image or for the fused views of one place.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .answer.answerer import Answerer, Calibration, Guess, Prediction, unit_rows
from .answer.coverage import Coverage, Typicality, scores_by_test
from .answer.knn import knn_locate
from .answer.refine import REFINE_RADIUS_KM, GalleryRefiner, PointRefiner, Refiner, check_refiner
from .bundle import BundleFiles, read_bundle
from .distributed import cores_per_process
from .errors import ModelError
from .features.cache import FeatureSet
from .models.ensemble import Head, make_head
from .models.fusion import group_views
from .models.image_side import ImageSide, apply_adapter
from .models.level_expert import LevelExpert
from .models.place_clip import PlaceCLIPConfig, is_stored_embedded
from .threads import math_threads

if TYPE_CHECKING:
    from .encoders.image import ImageEncoder

__all__ = ["GeoModel", "Guess", "Prediction", "load_model"]


class GeoModel:
    """A loaded model bundle, ready to predict."""

    def __init__(self, files: BundleFiles) -> None:
        self.files = files
        self.config = files.config
        self.labels = files.labels
        self.path = files.path
        try:
            self.model = load_head(self.config["model"], files.tensors, "model.")
            self.place_embeddings = torch.from_numpy(files.tensors["place_embeddings"].astype(np.float32))
            self.image_side = ImageSide.from_dict(self.config["image_encoder"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelError(f"{files.path}: incompatible model bundle ({str(exc).splitlines()[0]})") from None
        if len(self.labels) != self.place_embeddings.shape[0]:
            raise ModelError(f"{files.path}: labels.csv has {len(self.labels)} rows but the weights "
                             f"hold {self.place_embeddings.shape[0]} places")
        self._adapter: torch.nn.Module | None = None
        self._encoder = None
        gallery_label = files.tensors.get("gallery.label")
        if gallery_label is not None and gallery_label.size and not 0 <= gallery_label.min() <= gallery_label.max() \
                < len(self.labels):
            raise ModelError(f"{files.path}: gallery.label names labels outside 0…{len(self.labels) - 1}")
        answer = self.config.get("answer") or {}
        self.refine = str(answer.get("refine", "none"))
        """The refiner predict and evaluate use unless told otherwise."""
        if self.refine not in self.refiners and self.refine != "none":
            raise ModelError(f"{files.path}: answers refine with {self.refine!r}, which this bundle does not hold")
        try:
            self.level_expert = LevelExpert.from_bundle(self.config.get("level_expert"), files.tensors,
                                                        len(self.labels), self.model.config.image_dim)
        except ModelError as exc:
            raise ModelError(f"{files.path}: {exc}") from None
        self.coverage = Coverage.from_dict(self.config.get("coverage"))
        self.answerer = Answerer(self.labels, self.coverage, Calibration.from_dict(self.config.get("calibration")),
                                 merge_km=float(answer.get("merge_km", 0.0)))

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

    def embed(self, features: np.ndarray) -> np.ndarray:
        """Unit embeddings in the shared space for image features ``(n, dim)``, each image a place of one view."""
        return self.fused_embeddings(features, np.arange(len(features)))

    @property
    def fusion(self) -> str:
        """How the model fuses the views of a place (:data:`geoscope.models.fusion.FUSIONS`)."""
        return self.model.config.fusion

    @torch.no_grad()
    def fused_embeddings(self, features: np.ndarray, places: np.ndarray,
                         headings: np.ndarray | None = None) -> np.ndarray:
        """One unit embedding per place from image features ``(n, dim)`` of its views, fused as the model
        was trained to; ``places`` gives each row's place (codes 0…P−1), ``headings`` their headings in degrees."""
        views, angles = group_views(places, headings)
        mask = views >= 0
        x = torch.as_tensor(np.asarray(features, dtype=np.float32)[views[mask]])
        return self.model.embed_views(x, torch.as_tensor(mask), torch.as_tensor(angles, dtype=torch.float32)).numpy()

    @torch.no_grad()
    def probabilities(self, embeddings: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Probability of every place for unit image embeddings ``(n, embed_dim)`` and the image features
        ``(n, dim)`` they came from (a place's: the mean of its views'), which the level expert reads."""
        e = torch.nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float32), dim=-1)
        logits = self.model.scale() * e @ self.place_embeddings.T
        if self.level_expert is not None:
            logits += torch.from_numpy(self.level_expert.log_probabilities(features))
        return torch.softmax(logits, dim=-1).numpy()

    @property
    def training_centroid(self) -> tuple[float, float]:
        """The spherical centre of the training images (the centroid baseline's answer)."""
        lat, lon = self.config["training"]["centroid"]
        return float(lat), float(lon)

    def gallery_query(self, features: np.ndarray) -> np.ndarray:
        """Image features projected into the kNN gallery's space (scaled as the head reads them, PCA)."""
        t = self.files.tensors
        return (np.asarray(features, dtype=np.float32) - t["gallery.pca_mean"]) @ t["gallery.pca_components"].T

    @functools.cached_property
    def gallery(self) -> np.ndarray:
        """The kNN gallery's rows as float32 unit vectors (computed once)."""
        return unit_rows(self._gallery_rows[0])

    @functools.cached_property
    def _gallery_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The kNN gallery's rows as float32 and their squared norms (computed once)."""
        rows = self.files.tensors["gallery.features"].astype(np.float32)
        return rows, (rows * rows).sum(axis=1)

    def knn(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """kNN baseline: locate image features among the training gallery."""
        if not self.has_gallery:
            raise ModelError(f"{self.path}: this bundle has no kNN gallery")
        t = self.files.tensors
        return knn_locate(self.gallery_query(features), self.gallery, t["gallery.lat"], t["gallery.lon"])

    @property
    def has_gallery(self) -> bool:
        """Whether the bundle holds a kNN gallery (coverage, the kNN baseline and refinement read it)."""
        return "gallery.features" in self.files.tensors

    def coverage_scores(self, features: np.ndarray) -> np.ndarray:
        """How much each image (features, or the mean features of a place's views) is like the training images:
        the share of held-out validation images less like them, by the weaker of the coverage's tests.

        NaN (coverage unknown) for a bundle without a coverage threshold (older bundles) or gallery.
        """
        if self.coverage is None or not self.has_gallery:
            return np.full(len(features), np.nan)
        rows, squares = self._gallery_rows
        return self.coverage.combine(scores_by_test(features, self.gallery_query(features), rows, self.coverage.k,
                                                    self._typicality, squares))

    @functools.cached_property
    def _typicality(self) -> Typicality | None:
        return Typicality.from_tensors(self.files.tensors)

    @functools.cached_property
    def refiners(self) -> dict[str, Refiner]:
        """The refiners this bundle holds, by name (:data:`geoscope.answer.refine.REFINERS`)."""
        t = self.files.tensors
        label_lat, label_lon = self.labels["lat"].to_numpy(), self.labels["lon"].to_numpy()
        out: dict[str, Refiner] = {}
        if self.has_gallery and "gallery.label" in t:
            out["knn"] = GalleryRefiner(self.gallery_query, self.gallery, t["gallery.lat"], t["gallery.lon"],
                                        t["gallery.label"], label_lat, label_lon)
        if isinstance(self.config.get("refiner"), dict):
            try:
                head = load_head(self.config["refiner"]["model"], t, "refiner.model.")
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                raise ModelError(f"{self.path}: incompatible refiner ({str(exc).splitlines()[0]})") from None
            section = self.config["refiner"]
            out["gps"] = PointRefiner(head, t["refiner.place_embeddings"], t["refiner.lat"], t["refiner.lon"],
                                      label_lat, label_lon, float(section.get("radius_km", REFINE_RADIUS_KM)),
                                      section.get("places"))
        return out

    def refiner(self, name: str | None) -> Refiner | None:
        """The refiner called ``name`` (``None``: the bundle's default; ``"none"``: no refiner), or one clear error."""
        name = check_refiner(self.refine if name is None else name)
        if name == "none":
            return None
        if name not in self.refiners:
            why = {"knn": "its gallery has no labels to refine with: retrain it",
                   "gps": "it holds no GPS head: train one (--head gps) and attach it (geoscope train --refiner DIR)"}
            raise ModelError(f"{self.path}: cannot refine with {name}: {why[name]}")
        return self.refiners[name]

    def _refine(self, answers: list[tuple[Prediction, np.ndarray]], refiner: Refiner) -> list[Prediction]:
        """The place guesses of each prediction moved by ``refiner``, from the image features of its views."""
        rows = self._label_rows
        todo = [(p, f) for p, f in answers
                if not p.error and p.guesses and all(g.label in rows for g in p.guesses)]  # places, not regions
        if todo:
            width = max(len(p.guesses) for p, _ in todo)
            labels = np.array([[rows[g.label] for g in p.guesses]
                               + [rows[p.guesses[0].label]] * (width - len(p.guesses))
                               for p, _ in todo])  # padded with the first guess, whose refinement is not read
            features = np.concatenate([f for _, f in todo])
            places = np.repeat(np.arange(len(todo)), [len(f) for _, f in todo])
            moved = refiner.coordinates(features, places, labels)
            lat, lon = moved.lat.tolist(), moved.lon.tolist()
            names = [[None] * width] * len(todo) if moved.names is None else moved.names.tolist()
            for i, (p, _) in enumerate(todo):
                p.guesses = [_moved(g, lat[i][j], lon[i][j], names[i][j]) for j, g in enumerate(p.guesses)]
        return [p for p, _ in answers]

    @functools.cached_property
    def _label_rows(self) -> dict[str, int]:
        """Row of each label name in the label table."""
        return {name: i for i, name in enumerate(self.labels["name"].astype(str))}

    def predict(
        self, images: Sequence[str | os.PathLike[str]], top_k: int = 5, *, views: bool = False,
        level: str = "place", refine: str | None = None, allow_missing_views: bool = False, progress: bool = False,
    ) -> list[Prediction]:
        """Guesses for each image; with ``views=True`` the images are views of one place, fused.

        Unreadable images come back with ``error`` set and no guesses; the others are answered.
        A place with an unreadable view is answered only with ``allow_missing_views`` (and says so).
        ``refine`` names the refiner that moves each place guess to a point inside it (:mod:`geoscope.answer.refine`;
        ``None``: the bundle's default, :attr:`refine`).
        """
        paths = [str(p) for p in images]
        features = self.image_features(paths, progress=progress)
        with math_threads(cores_per_process()):  # the images are encoded: the heads have every core
            return self.predict_features(features, paths, top_k, views=views, level=level, refine=refine,
                                         allow_missing_views=allow_missing_views)

    def predict_features(
        self, fs: FeatureSet, paths: Sequence[str], top_k: int = 5, *, views: bool = False, level: str = "place",
        refine: str | None = None, allow_missing_views: bool = False,
    ) -> list[Prediction]:
        """:meth:`predict` from image features already extracted (:meth:`image_features`), one row per path."""
        refiner = self.refiner(refine)
        answers = self._answers(fs, list(paths), top_k, views, level, allow_missing_views)
        return self._refine(answers, refiner) if refiner is not None else [p for p, _ in answers]

    def _answers(self, fs: FeatureSet, paths: list[str], top_k: int, views: bool, level: str,
                 allow_missing_views: bool) -> list[tuple[Prediction, np.ndarray]]:
        """Each prediction with the image features it was made from (the rows of its readable views)."""
        features = np.nan_to_num(fs.embeddings)
        valid = np.asarray(fs.valid, dtype=bool)
        errors = dict(zip(np.flatnonzero(~valid).tolist(), fs.errors, strict=True))  # in row order
        if views:
            return [(self._answer_views(paths, features, valid, errors, top_k, level, allow_missing_views),
                     features[valid])]
        probs = self.probabilities(self.embed(features), features)
        scores = self.coverage_scores(features)
        answers = iter(self.answerer.answer_rows([p for p, ok in zip(paths, valid, strict=True) if ok], probs[valid],
                                                 top_k=top_k, level=level, coverage_scores=scores[valid]))
        return [(next(answers) if valid[i] else Prediction(p, [], errors[i]), features[i : i + 1])
                for i, p in enumerate(paths)]

    def _answer_views(self, paths: list[str], features: np.ndarray, valid: np.ndarray, errors: dict[int, str],
                      top_k: int, level: str, allow_missing: bool) -> Prediction:
        """One answer for the views of one place, fused (in the order given: their headings are unknown)."""
        unread = "; ".join(errors.values())
        if not valid.any():
            return Prediction(paths[0], [], f"no view could be read: {unread}", views=paths)
        warnings = []
        if not valid.all():
            if not allow_missing:
                return Prediction(paths[0], [], f"{int((~valid).sum())} of {len(paths)} views could not be read "
                                  f"({unread}); allow fewer views to answer from the others", views=paths)
            warnings.append(f"answered from {int(valid.sum())} of {len(paths)} views: {unread}")
        fused = self.fused_embeddings(features[valid], np.zeros(int(valid.sum()), dtype=np.int64))
        mean = features[valid].mean(axis=0, keepdims=True)
        score = float(self.coverage_scores(mean)[0])
        return self.answerer.answer(paths[0], self.probabilities(fused, mean)[0], top_k=top_k, level=level,
                                    coverage_score=score, views=[p for p, ok in zip(paths, valid, strict=True) if ok],
                                    warnings=warnings)


def _moved(guess: Guess, lat: float, lon: float, name: tuple[str, str, str] | None) -> Guess:
    """``guess`` moved to a refined point, named after it (``place``, ``region``, ``country``) when the refiner
    names it."""
    place, region, country = (guess.place, guess.region, guess.country) if name is None else name
    return Guess(lat, lon, guess.label, guess.probability, place, region, country)


def load_head(config: dict, tensors: dict[str, np.ndarray], prefix: str) -> Head:
    """The head (or ensemble) that ``config`` (a bundle's ``model`` section) describes, with its weights from
    ``tensors`` under ``prefix``; its places are stored embedded, so it needs no text or location encoder."""
    head = make_head(PlaceCLIPConfig(**{**config["place_clip"], "places_from": "names"}),
                     int(config.get("members", 1)))
    weights = {k.removeprefix(prefix): torch.from_numpy(v.copy()) for k, v in tensors.items() if k.startswith(prefix)}
    missing = [k for k in head.load_state_dict(weights, strict=False).missing_keys if not is_stored_embedded(k)]
    if missing:
        raise ValueError(f"the weights lack {len(missing)} tensor(s) of the model, first {prefix}{missing[0]}; "
                         "retrain it or restore weights.safetensors")
    return head.eval()


def load_model(directory: str | os.PathLike[str] | None = None) -> GeoModel:
    """Load a bundle directory (or the bundled default model) for prediction."""
    return GeoModel(read_bundle(directory))
