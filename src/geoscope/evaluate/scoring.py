"""Honest evaluation of a model on a manifest, beside two baselines on the same rows.

Baselines: the training centroid (always guess the middle of the training data) and
k-nearest neighbours over the same image features (the bundle's gallery); a model without
training images (zero-shot) has neither.
Views of one place are fused when the manifest has several per place.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..answer.answerer import unit_rows
from ..data.manifest import Manifest
from ..errors import GeoscopeError
from ..features.cache import hash_files
from ..geo.labels import LabelScheme, assign_labels
from ..geo.sphere import haversine_km, summarize_errors
from ..models.fusion import group_mean
from ..predict import GeoModel
from .results import CENTROID, KNN, MODEL, VIEWS_AVERAGED, EvaluationResult


def training_rows(model: GeoModel, manifest: Manifest, *, progress: bool = False) -> np.ndarray:
    """Which rows of ``manifest`` hold an image the model was trained on (by content hash; with ``progress``, a
    bar while the images are read)."""
    known = model.files.tensors.get("split.train_sha1")
    if known is None or len(known) == 0:
        return np.zeros(len(manifest), dtype=bool)
    seen = {bytes(row) for row in np.asarray(known, dtype=np.uint8)}
    digests = hash_files(manifest.image_paths, progress=progress)[0]
    return np.array([d is not None and d in seen for d in digests], dtype=bool)


def evaluate(
    model: GeoModel, manifest: Manifest, *, fuse_views: bool | None = None, progress: bool = True,
    dataset: str = "", include_training_rows: bool = False, refine: str | None = None,
) -> tuple[EvaluationResult, list[str]]:
    """Evaluate ``model`` on every readable row of ``manifest``; returns the result and the
    one-line errors of images that could not be read (those rows are left out).

    Rows whose image the model was trained on are left out (their count is
    ``result.training_rows``) unless ``include_training_rows``. The model's answers come from
    :meth:`GeoModel.answer`, the path predict takes (places grouped by ``location_id`` when views are
    fused): each is scored at its best single answer, the point its ``refine`` refiner gives
    (:mod:`geoscope.answer.refine`; ``None``: as predict answers, the bundle's default), its label for
    label accuracy, with its coverage and confidence. The baselines are computed here.
    """
    model.refiner(refine)  # an unknown refiner is refused before any image is read
    seen = training_rows(model, manifest, progress=progress)
    if seen.any() and not include_training_rows:
        if seen.all():
            raise GeoscopeError(f"all {len(seen):,} rows hold images the model was trained on: nothing honest "
                                "to measure (include them on purpose with --include-training-rows)")
        manifest = manifest.subset(~seen)
    features = model.image_features(manifest.image_paths, progress=progress)
    valid = np.asarray(features.valid, dtype=bool)
    if not valid.any():
        raise GeoscopeError(f"no image of the manifest could be read (first: {features.errors[0]})")
    frame = manifest.frame[valid].reset_index(drop=True)
    images = np.asarray(features.embeddings, dtype=np.float32)[valid]
    paths = [str(p) for p, ok in zip(manifest.image_paths, valid, strict=True) if ok]
    places = manifest.place_ids[valid].reset_index(drop=True)
    if fuse_views is None:
        fuse_views = bool(places.duplicated().any())
    codes = pd.factorize(places)[0] if fuse_views else np.arange(len(images))
    headings = frame["heading"].to_numpy(dtype=np.float64) if "heading" in frame else None
    raw = images
    if fuse_views:
        firsts = ~places.duplicated().to_numpy()
        raw = group_mean(images, codes)  # what the baselines read: each place's mean features
        frame = frame[firsts].reset_index(drop=True)
        paths = [p for p, first in zip(paths, firsts, strict=True) if first]

    # The model's answers, as predict gives them: one Prediction per place, scored at its best single answer.
    answers = model.answer(images, codes, headings, images=paths, refine=refine)
    unanswered = [a.error or "" for a in answers if a.answer is None]
    answered = np.array([a.answer is not None for a in answers], dtype=bool)
    if not answered.any():
        raise GeoscopeError(f"the model answered no image of the manifest ({unanswered[0]})")
    if not answered.all():  # non-finite probabilities: said like an unreadable image, left out
        frame, raw = frame[answered].reset_index(drop=True), raw[answered]
        paths = [p for p, ok in zip(paths, answered, strict=True) if ok]
        answers = [a for a in answers if a.answer is not None]
    labels = model.labels
    rows = {name: i for i, name in reversed(list(enumerate(labels["name"].astype(str))))}
    top = np.array([rows.get(a.answer.label, -1) for a in answers], dtype=np.int64)
    lat, lon = frame["lat"].to_numpy(), frame["lon"].to_numpy()
    predictions = pd.DataFrame({
        "image": paths, "lat": lat, "lon": lon,
        "pred_lat": [a.answer.lat for a in answers], "pred_lon": [a.answer.lon for a in answers],
        "probability": [a.answer.probability for a in answers],
        "pred_label": [a.answer.label for a in answers],
    })
    predictions["error_km"] = haversine_km(lat, lon, predictions["pred_lat"], predictions["pred_lon"])
    predictions["coverage_score"] = np.array([np.nan if a.coverage_score is None else a.coverage_score
                                              for a in answers], dtype=np.float64)
    if model.coverage is not None and not model.coverage.too_few:  # a model too small to test it says so instead
        predictions["in_coverage"] = np.array([bool(a.in_coverage) for a in answers], dtype=bool)
    if answers[0].answer.confidence is not None:  # as each answer states it
        for km in answers[0].answer.confidence:
            predictions[f"confidence_{km}"] = [a.answer.confidence[km] for a in answers]
    predictions["pred_country"] = [a.answer.country for a in answers]
    if "split" in frame:
        predictions["split"] = frame["split"].to_numpy()

    scheme = LabelScheme.from_dict(model.config["labels"])
    values = frame[scheme.params["column"]] if scheme.kind == "column" and \
        scheme.params.get("column") in frame else None
    true_ids = assign_labels(lat, lon, labels, scheme, values)
    names = labels["name"].to_numpy()
    predictions["true_label"] = np.where(true_ids >= 0, names[np.clip(true_ids, 0, None)], None)

    baselines = {}
    if model.training_centroid is not None:  # both baselines read the training images; a zero-shot model has none
        baselines[CENTROID] = _baseline(lat, lon, *model.training_centroid, labels, scheme, values)
        baselines[KNN] = _baseline(lat, lon, *model.knn(raw), labels, scheme, values)
    if fuse_views and model.fusion != "mean":  # a learned fusion beside the plain average of the same model's views
        averaged = unit_rows(group_mean(model.embed(images), codes))[answered]
        pick = model.answerer.best(model.probabilities(averaged, raw))
        baselines[VIEWS_AVERAGED] = _baseline(lat, lon, labels["lat"].to_numpy()[pick], labels["lon"].to_numpy()[pick],
                                              labels, scheme, values, ids=pick)
    metrics = {MODEL: _metrics(predictions, true_ids, top)}
    for name, table in baselines.items():
        metrics[name] = _metrics(table, true_ids, table.pop("_pred_id").to_numpy())
    result = EvaluationResult(
        predictions=predictions, baselines=baselines, metrics=metrics,
        model_name=str(model.config.get("name", model.path.name)), dataset=dataset,
        history=list(model.files.history), labels=labels, training_rows=int(seen.sum()),
    )
    return result, [*features.errors, *unanswered]


def _baseline(lat: np.ndarray, lon: np.ndarray, pred_lat, pred_lon, labels: pd.DataFrame,
              scheme: LabelScheme, values: pd.Series | None, ids: np.ndarray | None = None) -> pd.DataFrame:
    """Another answer's table: its coordinates, errors and labels (``ids`` when it answers with labels)."""
    pred_lat = np.broadcast_to(np.asarray(pred_lat, dtype=np.float64), lat.shape)
    pred_lon = np.broadcast_to(np.asarray(pred_lon, dtype=np.float64), lon.shape)
    if ids is None:
        ids = assign_labels(pred_lat, pred_lon, labels, scheme) if scheme.kind != "column" \
            else _nearest_label(pred_lat, pred_lon, labels)
    names = labels["name"].to_numpy()
    return pd.DataFrame({
        "pred_lat": pred_lat, "pred_lon": pred_lon,
        "error_km": haversine_km(lat, lon, pred_lat, pred_lon),
        "pred_label": np.where(ids >= 0, names[np.clip(ids, 0, None)], None),
        "_pred_id": ids,
    })


def _nearest_label(lat: np.ndarray, lon: np.ndarray, labels: pd.DataFrame) -> np.ndarray:
    d = haversine_km(lat[:, None], lon[:, None], labels["lat"].to_numpy()[None], labels["lon"].to_numpy()[None])
    return d.argmin(axis=1)


def _metrics(table: pd.DataFrame, true_ids: np.ndarray, pred_ids: np.ndarray) -> dict:
    """Distance metrics over every item (their count is ``n``) and label accuracy over the labelled
    ones (``n_labelled``: items whose true place is one of the model's labels)."""
    out = summarize_errors(table["error_km"].to_numpy()).to_dict()
    labelled = true_ids >= 0
    out["label_accuracy"] = float((pred_ids[labelled] == true_ids[labelled]).mean()) if labelled.any() \
        else float("nan")
    out["n_labelled"] = int(labelled.sum())
    return out
