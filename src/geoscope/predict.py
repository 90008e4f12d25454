"""Ranked location guesses for images, from a model bundle.

``GeoModel`` composes a bundle's stages: its image side (the frozen encoder it was trained on, and
any fine-tuned top), its head (:mod:`geoscope.models.heads`: the candidates already embedded), the
level expert, the kNN gallery, coverage, calibration and refiners. ``predict`` answers (see
:mod:`geoscope.answer.answerer`) with the top-k places, the hierarchy of countries and regions,
coverage and confidence, for each image or for the fused views of one place.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .answer.answerer import Answerer, Calibration, Guess, Prediction
from .answer.coverage import Coverage
from .answer.refine import Refiner, check_refiner
from .bundle import WEIGHTS, BundleFiles, read_bundle
from .bundle.gallery import Gallery
from .bundle.refiner import PointsRefiner
from .distributed import cores_per_process
from .encoders.image import ImageEncoder, get_image_encoder
from .errors import ModelError, quote_name
from .features.cache import FeatureSet
from .models.fusion import group_views
from .models.heads import HEADS, REFINING, Head, head_from_dict
from .models.image_side import ImageSide, apply_adapter
from .models.level_expert import LevelExpert, answer_probabilities
from .threads import math_threads

__all__ = ["GeoModel", "Guess", "Prediction", "load_model"]

_INCOMPATIBLE = (KeyError, TypeError, ValueError, RuntimeError)
"""What building a stage from a section or tensors that do not fit raises."""


class GeoModel:
    """A loaded model bundle, ready to predict: its stages, composed."""

    def __init__(self, files: BundleFiles, head: Head | None = None) -> None:
        """``head``: the head to compose when it does not come from the bundle's weights (a zero-shot head,
        :func:`geoscope.loading.zero_shot_model`); ``None``: the one its ``model`` section names."""
        self.files = files
        self.config = files.config
        self.labels = files.labels
        self.path = files.path
        try:
            self.head: Head = head if head is not None else head_from_dict(self.config["model"], files.tensors)
            self.image_side = ImageSide.from_dict(self.config["image_encoder"])
        except _INCOMPATIBLE as exc:
            raise ModelError(f"{files.path}: incompatible model bundle ({str(exc).splitlines()[0]})") from None
        if len(self.labels) != len(self.head):
            raise ModelError(f"{files.path}: labels.csv has {len(self.labels)} rows but the weights "
                             f"hold {len(self.head)} places")
        self._adapter: torch.nn.Module | None = None
        self._encoder = None
        self._gallery = Gallery.from_tensors(files.tensors)
        if self._gallery is not None:
            self._gallery.check_labels(len(self.labels), files.path)
            if self.head.image_dim is not None and self._gallery.dim != self.head.image_dim:
                raise ModelError(f"{quote_name(files.path / WEIGHTS)}: gallery.pca_mean has {self._gallery.dim} "
                                 f"values but the model reads {self.head.image_dim} image features")
        answer = self.config.get("answer") or {}
        self.refine = str(answer.get("refine", "none"))
        """The refiner predict and evaluate use unless told otherwise."""
        if self.refine not in self.refiners and self.refine != "none":
            raise ModelError(f"{files.path}: answers refine with {self.refine!r}, which this bundle does not hold")
        try:
            self.level_expert = LevelExpert.from_bundle(self.config.get("level_expert"), files.tensors,
                                                        len(self.labels), self.head.image_dim)
        except ModelError as exc:
            raise ModelError(f"{files.path}: {exc}") from None
        self.coverage = Coverage.from_dict(self.config.get("coverage"))
        self.answerer = Answerer(self.labels, self.coverage, Calibration.from_dict(self.config.get("calibration")),
                                 merge_km=float(answer.get("merge_km", 0.0)))

    @property
    def trained(self) -> bool:
        """Whether the model was trained on images (a zero-shot one was not: no gallery, centroid, refiners)."""
        return self.head.trainable

    @property
    def encoder(self) -> ImageEncoder:
        """The image encoder whose outputs the model reads (loaded on first use, then reused)."""
        if self._encoder is None:
            self._encoder = get_image_encoder(self.image_side.cached_encoder)
        return self._encoder

    @property
    def adapter(self) -> torch.nn.Module:
        """Cached encoder outputs → image features (the fine-tuned encoder top, if any; loaded on first use)."""
        if self._adapter is None:
            try:
                self._adapter = self.image_side.stored_adapter(self.files.tensors)
            except RuntimeError as exc:
                raise ModelError(f"{self.path}: fine-tuned encoder weights do not fit "
                                 f"({str(exc).splitlines()[0]})") from None
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
        return self.head.fusion

    @torch.no_grad()
    def fused_embeddings(self, features: np.ndarray, places: np.ndarray,
                         headings: np.ndarray | None = None) -> np.ndarray:
        """One unit embedding per place from image features ``(n, dim)`` of its views, fused as the model
        was trained to; ``places`` gives each row's place (codes 0…P−1), ``headings`` their headings in degrees."""
        views, angles = group_views(places, headings)
        mask = views >= 0
        x = torch.as_tensor(np.asarray(features, dtype=np.float32)[views[mask]])
        return self.head.embed_views(x, torch.as_tensor(mask), torch.as_tensor(angles, dtype=torch.float32)).numpy()

    def probabilities(self, embeddings: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Probability of every place for unit image embeddings ``(n, embed_dim)`` and the image features
        ``(n, dim)`` they came from (a place's: the mean of its views'), which the level expert reads."""
        return answer_probabilities(self.head, self.level_expert, embeddings, features)

    @property
    def training_centroid(self) -> tuple[float, float] | None:
        """The spherical centre of the training images (the centroid baseline's answer; None: not trained)."""
        centroid = (self.config.get("training") or {}).get("centroid")
        if centroid is None:
            return None
        lat, lon = centroid
        return float(lat), float(lon)

    def gallery_query(self, features: np.ndarray) -> np.ndarray:
        """Image features projected into the kNN gallery's space (scaled as the head reads them, PCA)."""
        return self._stored_gallery().query(features)

    @property
    def gallery(self) -> np.ndarray:
        """The kNN gallery's rows as float32 unit vectors (computed once)."""
        return self._stored_gallery().unit

    def knn(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """kNN baseline: locate image features among the training gallery."""
        return self._stored_gallery().knn(features)

    def _stored_gallery(self) -> Gallery:
        if self._gallery is None:
            if not self.trained:
                raise ModelError(f"{self.config.get('name')}: a zero-shot model has no training images to search")
            raise ModelError(f"{self.path}: this bundle has no kNN gallery")
        return self._gallery

    @property
    def has_gallery(self) -> bool:
        """Whether the bundle holds a kNN gallery (coverage, the kNN baseline and refinement read it)."""
        return self._gallery is not None

    def coverage_scores(self, features: np.ndarray) -> np.ndarray:
        """How much each image (features, or the mean features of a place's views) is like the training images:
        the share of held-out validation images less like them, by the weaker of the coverage's tests.

        NaN (coverage unknown) for a bundle without a coverage threshold (older bundles) or gallery.
        """
        if self.coverage is None or self._gallery is None:
            return np.full(len(features), np.nan)
        return self.coverage.combine(self._gallery.scores(features, self.coverage.k))

    @functools.cached_property
    def refiners(self) -> dict[str, Refiner]:
        """The refiners this bundle holds, by name (:data:`geoscope.answer.refine.REFINERS`): ``knn`` over the
        gallery, and a head over points (``gps``) carried under ``refiner.``."""
        label_lat, label_lon = self.labels["lat"].to_numpy(), self.labels["lon"].to_numpy()
        out: dict[str, Refiner] = {}
        knn = self._gallery.refiner(label_lat, label_lon) if self._gallery is not None else None
        if knn is not None:
            out["knn"] = knn
        if isinstance(self.config.get("refiner"), dict):
            try:
                points = PointsRefiner.from_dict(self.config["refiner"], self.files.tensors)
            except _INCOMPATIBLE as exc:
                raise ModelError(f"{self.path}: incompatible refiner ({str(exc).splitlines()[0]})") from None
            out[points.name] = points.refiner(label_lat, label_lon)
        return out

    def refiner(self, name: str | None) -> Refiner | None:
        """The refiner called ``name`` (``None``: the bundle's default; ``"none"``: no refiner), or one clear error."""
        name = check_refiner(self.refine if name is None else name)
        if name == "none":
            return None
        if not self.trained:
            raise ModelError(f"{self.config.get('name')}: a zero-shot model has no training images to refine with")
        if name not in self.refiners:
            why = {"knn": "its gallery has no labels to refine with: retrain it"} | {
                kind: f"it holds no {HEADS[kind].title} head: train one (--head {kind}) and attach it "
                      "(geoscope train --refiner DIR)" for kind in REFINING}
            raise ModelError(f"{self.path}: cannot refine with {name}: {why.get(name, 'it holds no such refiner')}")
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


def load_model(directory: str | os.PathLike[str] | None = None) -> GeoModel:
    """Load a bundle directory (or the bundled default model) for prediction."""
    return GeoModel(read_bundle(directory))
