"""Ranked location guesses for images, from a model bundle.

``GeoModel`` composes a bundle's stages: its image side (the frozen encoder it was trained on, and
any fine-tuned top), its head (:mod:`geoscope.models.heads`: the candidates already embedded), the
level expert, the kNN gallery, coverage, calibration and refiners. :meth:`GeoModel.answer` is the one
answer path (fusion → probabilities → the best single answer → refinement → names, hierarchy, coverage
and confidence; see :mod:`geoscope.answer.answerer`), for each image or for the fused views of a place;
``predict``, the server and ``evaluate`` all go through it. :meth:`GeoModel.verify`
checks a claim of where a photo was taken from the same first steps (:meth:`GeoModel.place_evidence`) and
the bundle's claim check (:mod:`geoscope.answer.verify`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .answer.answerer import Answer, Answerer, Calibration, Evidence, Guess, Prediction
from .answer.coverage import Coverage
from .answer.refine import Refined, Refiner, check_refiner
from .answer.verify import DEFAULT_KM, ClaimCheck, Verdict, check_claim
from .bundle import WEIGHTS, BundleFiles, read_bundle
from .bundle.gallery import Gallery
from .bundle.refiner import PointsRefiner
from .distributed import cores_per_process
from .encoders.image import ImageEncoder, get_image_encoder
from .encoders.runtime import Runtime
from .errors import ModelError, quote_name
from .features.cache import FeatureSet
from .geo.sphere import haversine_km
from .models.fusion import group_mean, group_views
from .models.heads import HEADS, REFINING, Head, head_from_dict
from .models.image_side import ImageSide, apply_adapter
from .models.level_expert import LevelExpert, answer_probabilities
from .threads import math_threads

__all__ = ["Answer", "GeoModel", "Guess", "Prediction", "Verdict", "load_model"]

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
        self.runtime: Runtime | None = None
        """What runs the image encoder (``None``: ``$GEOSCOPE_RUNTIME``, else ``auto``); set before first use."""
        self.streams: int | None = None
        """In how many streams the image encoder runs (:attr:`~geoscope.encoders.image.ImageEncoder.streams`)."""
        self._gallery = Gallery.from_tensors(files.tensors, self.config.get("gallery"))
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
            self._encoder = get_image_encoder(self.image_side.cached_encoder, runtime=self.runtime,
                                              streams=self.streams)
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

    def view_features(self, views: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """Image features ``(n, dim)`` of images already decoded and preprocessed, one ``(crops, 3, c, c)`` array
        per image (uploads, occluded frames), never cached."""
        return apply_adapter(self.adapter, self.image_side.encode_views(views, self.encoder, batch_size))

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
        the share of held-out validation images less like them, by the weakest of the coverage's tests.

        NaN (coverage unknown) for a bundle without a coverage threshold (older bundles) or gallery.
        """
        return self.coverage_of(features)[0]

    def coverage_of(self, features: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        """:meth:`coverage_scores`, and why each row is out of coverage (``None``: it is not, or unknown)."""
        tests = self.coverage_tests(features)
        if self.coverage is None or tests is None:
            return np.full(len(features), np.nan), [None] * len(features)
        return self.coverage.combine(tests), self.coverage.reasons(tests)

    def coverage_tests(self, features: np.ndarray) -> dict[str, np.ndarray] | None:
        """Each coverage test's score of each row (:meth:`geoscope.bundle.gallery.Gallery.scores`; ``None``: the
        bundle has no coverage threshold or gallery)."""
        if self.coverage is None or self._gallery is None:
            return None
        return self._gallery.scores(features, self.coverage.k)

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

    @functools.cached_property
    def _label_rows(self) -> dict[str, int]:
        """Row of each label name in the label table."""
        return {name: i for i, name in reversed(list(enumerate(self.labels["name"].astype(str))))}

    def place_evidence(self, features: np.ndarray, places: np.ndarray, headings: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """The first steps of :meth:`answer`: each place's probability of every label, its coverage score and why
        it is out of coverage (:meth:`coverage_of`), from the image features ``(n, dim)`` of its views (``places``:
        each row's place, codes 0…P−1), fused as the model was trained to; the level expert and coverage read the
        mean of the place's features."""
        embeddings = self.fused_embeddings(features, places, headings)  # fusion
        mean = place_means(features, places)
        return self.probabilities(embeddings, mean), *self.coverage_of(mean)

    def answer(self, features: np.ndarray, places: np.ndarray | None = None, headings: np.ndarray | None = None, *,
               images: Sequence[str] | None = None, top_k: int = 5, level: str = "place",
               refine: str | None = None, evidence: int = 0) -> list[Prediction]:
        """The one answer path: one :class:`Prediction` per place from the image features ``(n, dim)`` of its
        views (readable images only), for many places at once; with ``evidence`` > 0, each also lists that many
        training places most like it (:meth:`evidence`).

        ``places`` gives each row's place (codes 0…P−1; ``None``: every row a place of one view), ``headings``
        the rows' headings in degrees (``None``: unknown), ``images`` each place's name (its first view). The
        views are fused as the model was trained to; the probabilities of every label (the level expert reads
        the mean of the place's features) give the best single answer, which the ``refine`` refiner (``None``:
        the bundle's default, :attr:`refine`) moves to a point inside its label together with the labels
        guessed beside it; then names, the hierarchy and levels, coverage and the calibrated confidence
        (:meth:`geoscope.answer.answerer.Answerer.answer_rows`). Predict, serve and evaluate all answer here.
        """
        refiner = self.refiner(refine)
        self.answerer.check(top_k, level)
        features = np.asarray(features, dtype=np.float32)
        places = np.arange(len(features)) if places is None else np.asarray(places, dtype=np.int64)
        count = int(places.max()) + 1 if len(places) else 0
        names = [str(i) for i in range(count)] if images is None else [str(i) for i in images]
        if len(names) != count:
            raise ValueError(f"{count} places but {len(names)} image names")
        if count == 0:
            return []
        probabilities, coverage, why = self.place_evidence(features, places, headings)

        def refined(rows: np.ndarray, labels: np.ndarray) -> Refined:
            """Where ``refiner`` moves the ``labels`` named for the places ``rows``, from their views."""
            if len(rows) == count:  # every place answered (the rule): no copy of the features
                return refiner.coordinates(features, places, labels)
            code = np.full(count, -1, dtype=np.int64)
            code[rows] = np.arange(len(rows))
            keep = code[places] >= 0
            return refiner.coordinates(features[keep], code[places[keep]], labels)

        answers = self.answerer.answer_rows(names, probabilities, top_k=top_k, level=level, coverage_scores=coverage,
                                            coverage_reasons=why, refine=refined if refiner is not None else None)
        if evidence > 0:
            self.evidence(place_means(features, places), answers, evidence)
        return answers

    def evidence(self, features: np.ndarray, answers: Sequence[Prediction], k: int) -> None:
        """Give each answer the ``k`` training places whose images are most like its features (a place's: the mean
        of its views'), from the kNN gallery, with their distance to the answer and, where the bundle recorded it
        and the photo is on this machine, its path (:meth:`gallery_image`)."""
        gallery, names = self._stored_gallery(), self.labels["name"].astype(str).to_numpy()
        rows, similarity = gallery.nearest(features, k)
        for prediction, found, alike in zip(answers, rows, similarity, strict=True):
            if prediction.answer is None:
                continue
            found = found[found >= 0]
            km = haversine_km(prediction.answer.lat, prediction.answer.lon, gallery.lat[found], gallery.lon[found])
            labels = gallery.label[found] if gallery.label is not None else None
            images = [self.gallery_image(int(r)) for r in found]
            prediction.evidence = [Evidence(float(gallery.lat[r]), float(gallery.lon[r]),
                                            "" if labels is None else str(names[labels[i]]), float(alike[i]),
                                            float(km[i]), int(r), None if images[i] is None else str(images[i]))
                                   for i, r in enumerate(found)]

    def gallery_image(self, row: int) -> Path | None:
        """The training photo of kNN gallery row ``row``, absolute and resolved, where the bundle recorded its path
        and it is a file on this machine (None otherwise: bundles written before paths were recorded, a photo
        not copied here, a row outside the gallery)."""
        images = self._gallery.images if self._gallery is not None else None
        return images.resolve(row) if images is not None else None

    def predict(
        self, images: Sequence[str | os.PathLike[str]], top_k: int = 5, *, views: bool = False,
        headings: Sequence[float] | None = None, level: str = "place", refine: str | None = None,
        allow_missing_views: bool = False, progress: bool = False, evidence: int = 0,
        features: FeatureSet | None = None,
    ) -> list[Prediction]:
        """Guesses for each image; with ``views=True`` the images are views of one place, fused.

        Unreadable images come back with ``error`` set and no guesses; the others are answered.
        A place with an unreadable view is answered only with ``allow_missing_views`` (and says so).
        ``refine`` names the refiner that moves each place guess to a point inside it (:mod:`geoscope.answer.refine`;
        ``None``: the bundle's default, :attr:`refine`). ``headings``: each view's compass heading, where known.
        ``evidence``: also list that many training places most like each photo. ``features``: the images'
        features when they were extracted elsewhere (a Ray cluster), as :meth:`image_features` gives them.
        """
        if views:
            return self.predict_places([images], top_k, headings=None if headings is None else [headings],
                                       level=level, refine=refine, allow_missing_views=allow_missing_views,
                                       progress=progress, evidence=evidence, features=features)
        paths = [str(p) for p in images]
        features = self.image_features(paths, progress=progress) if features is None else features
        with math_threads(cores_per_process()):  # the images are encoded: the heads have every core
            return self.predict_features(features, paths, top_k, level=level, refine=refine, evidence=evidence)

    def predict_places(
        self, places: Sequence[Sequence[str | os.PathLike[str]]], top_k: int = 5, *,
        headings: Sequence[Sequence[float] | None] | None = None, level: str = "place", refine: str | None = None,
        allow_missing_views: bool = False, progress: bool = False, evidence: int = 0,
        features: FeatureSet | None = None,
    ) -> list[Prediction]:
        """One answer per place, each seen in several views (its images), all answered together (``features``: of
        every view in order, when extracted elsewhere)."""
        paths = [str(p) for views in places for p in views]
        codes = np.repeat(np.arange(len(places)), [len(views) for views in places])
        angles = None
        if headings is not None and any(h is not None for h in headings):
            angles = np.concatenate([np.full(len(v), np.nan) if h is None else np.asarray(h, dtype=np.float64)
                                     for v, h in zip(places, headings, strict=True)]) if paths else None
        features = self.image_features(paths, progress=progress) if features is None else features
        with math_threads(cores_per_process()):
            return self.predict_features(features, paths, top_k, views=True, places=codes, headings=angles,
                                         level=level, refine=refine, allow_missing_views=allow_missing_views,
                                         evidence=evidence)

    def predict_features(
        self, fs: FeatureSet, paths: Sequence[str], top_k: int = 5, *, views: bool = False,
        places: np.ndarray | None = None, headings: np.ndarray | None = None, level: str = "place",
        refine: str | None = None, allow_missing_views: bool = False, evidence: int = 0,
    ) -> list[Prediction]:
        """:meth:`predict` from image features already extracted (:meth:`image_features`), one row per path.

        With ``views=True`` the rows are the views of one place, or of several: ``places`` gives each row's
        place (codes 0…P−1, in order of first appearance) and one prediction comes back per place."""
        self.refiner(refine)
        self.answerer.check(top_k, level)
        units = Units.of(fs, paths, views=views, places=places, headings=headings,
                         allow_missing_views=allow_missing_views)
        answers = self.answer(units.features, units.codes, units.headings, images=units.names, top_k=top_k,
                              level=level, refine=refine, evidence=evidence)
        return units.fill(answers, lambda image, views, error: Prediction(image, [], error, views=views))

    # --- claims ---

    @functools.cached_property
    def claim_check(self) -> ClaimCheck:
        """The bundle's claim check (its ``verify`` section), or one clear error naming what to do."""
        try:
            check = ClaimCheck.from_dict(self.config.get("verify"), self.labels)
        except ModelError as exc:
            raise ModelError(f"{self.path}: {exc}") from None
        if check is None:
            raise ModelError(f"{self.path}: this model cannot check claims: its config.json has no \"verify\" "
                             "section (`geoscope train` fits one on the validation split; for a model trained before, "
                             "scripts/fit_verify.py in the repository does: see docs/verify.md)")
        return check

    def in_coverage(self, scores: np.ndarray) -> list[bool | None]:
        """Whether each coverage score (:meth:`coverage_scores`) lies within the model's coverage (``None``: unknown,
        as :class:`Prediction` says it)."""
        return [None if self.coverage is None else self.coverage.says(float(s)) for s in scores]

    def verify(
        self, images: Sequence[str | os.PathLike[str]], lat: float, lon: float, km: float = DEFAULT_KM, *,
        views: bool = False, headings: Sequence[float] | None = None, allow_missing_views: bool = False,
        progress: bool = False,
    ) -> list[Verdict]:
        """How each image (with ``views=True``: the images as views of one place, fused) bears on the claim that
        it was taken within ``km`` of ``lat``, ``lon``: a :class:`~geoscope.answer.verify.Verdict` each."""
        check_claim(lat, lon, km)
        self.claim_check  # noqa: B018 (refused before any image is read)
        paths = [str(p) for p in images]
        features = self.image_features(paths, progress=progress)
        angles = None if headings is None or not views else np.asarray(headings, dtype=np.float64)
        with math_threads(cores_per_process()):
            return self.verify_features(features, paths, lat, lon, km, views=views,
                                        places=np.zeros(len(paths), dtype=np.int64) if views else None,
                                        headings=angles, allow_missing_views=allow_missing_views)

    def verify_features(
        self, fs: FeatureSet, paths: Sequence[str], lat: float, lon: float, km: float = DEFAULT_KM, *,
        views: bool = False, places: np.ndarray | None = None, headings: np.ndarray | None = None,
        allow_missing_views: bool = False,
    ) -> list[Verdict]:
        """:meth:`verify` from image features already extracted, grouped as :meth:`predict_features` groups them;
        the probabilities and coverage come from :meth:`place_evidence`, as the answer's do."""
        claim = check_claim(lat, lon, km)
        check = self.claim_check
        units = Units.of(fs, paths, views=views, places=places, headings=headings,
                         allow_missing_views=allow_missing_views)
        if units.names:
            probabilities, coverage, _ = self.place_evidence(units.features, units.codes, units.headings)
        else:
            probabilities, coverage = np.zeros((0, len(self.labels))), np.zeros(0)
        verdicts = check.check(probabilities, claim, in_coverage=self.in_coverage(coverage),
                               coverage_scores=coverage.tolist(), images=units.names)
        return units.fill(verdicts, lambda image, views, error: Verdict(image, claim, error=error, views=views))


@dataclass
class Units:
    """Rows of image features grouped into what is answered, an image or a place seen in several views: the rows
    each answerable unit reads, and why the others cannot be answered (an unreadable image, a missing view)."""

    features: np.ndarray
    """The rows read: the readable views of the answerable units."""
    codes: np.ndarray
    """Each of those rows' unit among the answerable ones (0…A−1)."""
    headings: np.ndarray | None
    names: list[str]
    """Each answerable unit's name (its first view)."""
    slots: list[tuple[str, list[str] | None, list[str] | None, str | None, str | None]]
    """Every unit in order: its name, its views (``None``: a single image), the views read, why it cannot be
    answered (``None``: it can) and a warning."""

    @classmethod
    def of(cls, fs: FeatureSet, paths: Sequence[str], *, views: bool = False, places: np.ndarray | None = None,
           headings: np.ndarray | None = None, allow_missing_views: bool = False) -> Units:
        """Each row an image of its own, or (``views``) the rows of each place in ``places`` (``None``: one place);
        a place with an unreadable view is answered only with ``allow_missing_views`` (with a warning)."""
        paths = [str(p) for p in paths]
        features = np.nan_to_num(np.asarray(fs.embeddings, dtype=np.float32))
        valid = np.asarray(fs.valid, dtype=bool)
        errors = dict(zip(np.flatnonzero(~valid).tolist(), fs.errors, strict=True))  # in row order
        if not views:
            slots = [(p, None, None, None if valid[i] else errors[i], None) for i, p in enumerate(paths)]
            names = [p for p, ok in zip(paths, valid, strict=True) if ok]
            return cls(features[valid], np.arange(len(names)), None, names, slots)
        codes = np.zeros(len(paths), dtype=np.int64) if places is None else np.asarray(places, dtype=np.int64)
        slots = []
        answerable: list[int] = []
        for place in range(int(codes.max()) + 1 if len(codes) else 0):
            rows = np.flatnonzero(codes == place)
            views_of = [paths[i] for i in rows]
            unread = "; ".join(errors[i] for i in rows if not valid[i])
            ok = valid[rows]
            read = [paths[i] for i in rows if valid[i]]
            if not ok.any():
                slots.append((views_of[0], views_of, None, f"no view could be read: {unread}", None))
            elif not ok.all() and not allow_missing_views:
                slots.append((views_of[0], views_of, None, f"{int((~ok).sum())} of {len(rows)} views could not be "
                              f"read ({unread}); allow fewer views to answer from the others", None))
            else:
                warning = None if ok.all() else f"answered from {int(ok.sum())} of {len(rows)} views: {unread}"
                slots.append((views_of[0], views_of, read, None, warning))
                answerable.append(place)
        keep = valid & np.isin(codes, answerable)
        code = np.full(len(slots), -1, dtype=np.int64)
        code[answerable] = np.arange(len(answerable))
        names = [slots[place][0] for place in answerable]
        return cls(features[keep], code[codes[keep]], None if headings is None else np.asarray(headings)[keep],
                   names, slots)

    def fill(self, answered: Sequence, refused: Callable[[str, list[str] | None, str], object]) -> list:
        """Every unit's result in order: the answerable ones' from ``answered`` (in order; given the views read and
        any warning), the others' from ``refused(name, views, why)``."""
        results = iter(answered)
        out = []
        for name, views, read, error, warning in self.slots:
            if error is not None:
                out.append(refused(name, views, error))
                continue
            result = next(results)
            if views is not None:
                result.views = read
                if warning is not None and result.error is None:
                    result.warnings.append(warning)
            out.append(result)
        return out


def place_means(features: np.ndarray, places: np.ndarray) -> np.ndarray:
    """Each place's mean image features (what the level expert, coverage and evidence read); the rows themselves
    when every place is one row, in order."""
    count = int(places.max()) + 1 if len(places) else 0
    single = len(places) == count and bool((places == np.arange(count)).all())
    return features if single else group_mean(features, places)


def load_model(directory: str | os.PathLike[str] | None = None) -> GeoModel:
    """Load a bundle directory (or the bundled default model) for prediction."""
    return GeoModel(read_bundle(directory))
